//! Safety numbers: a 60-digit code two people compare out of band to be sure no one
//! sits between them.
//!
//! Derived from the two accounts' identity public keys only, so it is the same on both
//! sides and on every device of either account, and it changes exactly when an identity
//! key changes. Each key gives 30 digits (an iterated SHA-512, as Signal does, so that
//! finding a key with a chosen fingerprint is costly); the two halves are put in a fixed
//! order so both people see the same 60 digits.

use sha2::{Digest, Sha512};
use sotto_proto::IdentityPublicKey;

/// Version of the derivation (part of the hash input and of the scannable form).
const VERSION: u16 = 1;
/// Hash iterations per fingerprint.
const ITERATIONS: usize = 5200;
/// Prefix of the scannable form.
const SCAN_PREFIX: &str = "sotto-sn1:";

/// The 30 digits and the hash they come from, for one identity key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Fingerprint {
    digits: String,
    hash: [u8; 32],
}

impl Fingerprint {
    fn of(key: &IdentityPublicKey) -> Self {
        let mut hash = Sha512::new()
            .chain_update(VERSION.to_be_bytes())
            .chain_update(b"sotto/safety-number")
            .chain_update(key.as_bytes())
            .finalize();
        for _ in 0..ITERATIONS {
            hash = Sha512::new()
                .chain_update(hash)
                .chain_update(key.as_bytes())
                .finalize();
        }
        let mut digits = String::with_capacity(30);
        for chunk in hash[..30].chunks_exact(5) {
            let value = chunk.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
            digits.push_str(&format!("{:05}", value % 100_000));
        }
        let mut truncated = [0u8; 32];
        truncated.copy_from_slice(&hash[..32]);
        Self {
            digits,
            hash: truncated,
        }
    }
}

/// The safety number of two accounts.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    first: Fingerprint,
    second: Fingerprint,
}

impl std::fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetyNumber({})", self.grouped())
    }
}

impl SafetyNumber {
    /// The safety number between two identity keys (order does not matter).
    pub fn new(a: &IdentityPublicKey, b: &IdentityPublicKey) -> Self {
        let (fa, fb) = (Fingerprint::of(a), Fingerprint::of(b));
        let (first, second) = if fa <= fb { (fa, fb) } else { (fb, fa) };
        Self { first, second }
    }

    /// The 60 digits without spaces.
    pub fn digits(&self) -> String {
        format!("{}{}", self.first.digits, self.second.digits)
    }

    /// The 60 digits in 12 groups of 5, as shown to people.
    pub fn grouped(&self) -> String {
        let digits = self.digits();
        let groups: Vec<&str> = (0..12).map(|i| &digits[i * 5..i * 5 + 5]).collect();
        groups.join(" ")
    }

    /// True if `typed` is this number (spaces and other separators ignored).
    pub fn matches_digits(&self, typed: &str) -> bool {
        let typed: String = typed.chars().filter(|c| c.is_ascii_digit()).collect();
        let non_digits = typed.len() != typed.chars().count();
        !non_digits && typed == self.digits()
    }

    /// A string for a QR code: version and both full fingerprint hashes.
    pub fn scannable(&self) -> String {
        format!(
            "{SCAN_PREFIX}{}{}",
            sotto_proto::ids::to_hex(&self.first.hash),
            sotto_proto::ids::to_hex(&self.second.hash)
        )
    }

    /// True if the other person's scanned code is this number.
    pub fn matches_scanned(&self, scanned: &str) -> bool {
        scanned.trim().eq_ignore_ascii_case(&self.scannable())
    }
}

/// One account's own 30-digit fingerprint (shown by `whoami`).
pub fn fingerprint_digits(key: &IdentityPublicKey) -> String {
    let digits = Fingerprint::of(key).digits;
    let groups: Vec<&str> = (0..6).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    groups.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> IdentityPublicKey {
        IdentityPublicKey::from_bytes([b; 32])
    }

    #[test]
    fn both_sides_see_the_same_sixty_digits() {
        let ab = SafetyNumber::new(&key(1), &key(2));
        let ba = SafetyNumber::new(&key(2), &key(1));
        assert_eq!(ab, ba);
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().chars().all(|c| c.is_ascii_digit()));
        assert_eq!(ab.grouped().split(' ').count(), 12);
        assert!(ab.matches_digits(&ab.grouped()));
        assert!(ab.matches_scanned(&ba.scannable()));
    }

    #[test]
    fn a_different_key_changes_the_number() {
        let ab = SafetyNumber::new(&key(1), &key(2));
        let ac = SafetyNumber::new(&key(1), &key(3));
        assert_ne!(ab.digits(), ac.digits());
        assert!(!ab.matches_digits(&ac.digits()));
        assert!(!ab.matches_scanned(&ac.scannable()));
        // One wrong digit is a mismatch.
        let mut wrong = ab.digits().into_bytes();
        wrong[59] = if wrong[59] == b'0' { b'1' } else { b'0' };
        assert!(!ab.matches_digits(&String::from_utf8(wrong).unwrap()));
    }

    #[test]
    fn the_derivation_is_stable() {
        // Pinned so that a change of derivation (which would make every user's
        // verified contacts look changed) cannot slip in unnoticed.
        let n = SafetyNumber::new(&key(1), &key(2));
        assert_eq!(n.digits(), PINNED_1_2);
    }

    // Cross-checked with an independent Python implementation of the same derivation.
    const PINNED_1_2: &str = "413529433170570174990239439221741273674093675397373380921215";
}
