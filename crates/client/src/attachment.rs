//! Attachment encryption: a fresh random 256-bit key per file, AES-256-GCM over 64 KiB
//! chunks (the STREAM construction), and SHA-256 of the whole ciphertext carried in
//! the signed MLS message.
//!
//! Chunk `i` is sealed with the nonce `i` (8 bytes, big-endian) followed by
//! `00 00 00 f`, where `f` is 1 for the last chunk and 0 otherwise; a file is never
//! empty of chunks (an empty file is one empty last chunk). Reordering, truncating or
//! extending the ciphertext breaks a tag; any change at all breaks the digest, which is
//! checked over the whole download before a single plaintext byte is written out. The
//! key is used for one file only, so nonces never repeat under a key.

use std::io::{Read, Write};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn io(what: &'static str, path: &Path, e: &std::io::Error) -> ClientError {
    ClientError::file(
        what.trim_start_matches("cannot "),
        path,
        std::io::Error::new(e.kind(), e.to_string()),
    )
}

/// Reads as many bytes as fit in `buf` (fewer only at the end of the input).
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What encrypting a file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext size.
    pub size: u64,
    /// SHA-256 of the ciphertext file.
    pub digest: [u8; 32],
}

/// Encrypts `input` into `output` under `key`, chunk by chunk (constant memory).
pub fn seal_file(key: &[u8; 32], input: &Path, output: &Path) -> Result<Sealed, ClientError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(input).map_err(|e| io("cannot open", input, &e))?,
    );
    let mut writer = std::io::BufWriter::new(
        create_private(output).map_err(|e| io("cannot create", output, &e))?,
    );
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    // Read one chunk ahead to know which chunk is the last.
    let mut current = vec![0u8; CHUNK];
    let mut next = vec![0u8; CHUNK];
    let mut len = fill(&mut reader, &mut current).map_err(|e| io("cannot read", input, &e))?;
    let mut index = 0u64;
    loop {
        let next_len = if len == CHUNK {
            fill(&mut reader, &mut next).map_err(|e| io("cannot read", input, &e))?
        } else {
            0
        };
        let last = next_len == 0;
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce(index, last)),
                Payload {
                    msg: &current[..len],
                    aad: b"",
                },
            )
            .map_err(|_| ClientError::Local("attachment encryption failed".into()))?;
        hasher.update(&sealed);
        writer
            .write_all(&sealed)
            .map_err(|e| io("cannot write", output, &e))?;
        size += len as u64;
        if last {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        len = next_len;
        index += 1;
    }
    writer
        .into_inner()
        .map_err(|e| io("cannot write", output, e.error()))?
        .sync_all()
        .map_err(|e| io("cannot write", output, &e))?;
    Ok(Sealed {
        size,
        digest: hasher.finalize().into(),
    })
}

/// SHA-256 of a file.
pub fn digest_file(path: &Path) -> Result<[u8; 32], ClientError> {
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(path).map_err(|e| io("cannot open", path, &e))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(&mut reader, &mut buf).map_err(|e| io("cannot read", path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Creates (or truncates) a file only its owner can read, from the first byte.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Decrypts `input` (already checked against its digest) into `output`, which is
/// removed again if any chunk fails to authenticate or the size is not `expected_size`.
pub fn open_file(
    key: &[u8; 32],
    input: &Path,
    output: &Path,
    expected_size: u64,
) -> Result<(), ClientError> {
    let result = open_inner(key, input, output, expected_size);
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    }
    result
}

fn open_inner(
    key: &[u8; 32],
    input: &Path,
    output: &Path,
    expected_size: u64,
) -> Result<(), ClientError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(input).map_err(|e| io("cannot open", input, &e))?,
    );
    let mut writer = std::io::BufWriter::new(
        create_private(output).map_err(|e| io("cannot create", output, &e))?,
    );
    let mut current = vec![0u8; CHUNK + TAG];
    let mut next = vec![0u8; CHUNK + TAG];
    let mut len = fill(&mut reader, &mut current).map_err(|e| io("cannot read", input, &e))?;
    let mut index = 0u64;
    let mut size = 0u64;
    loop {
        let next_len = if len == CHUNK + TAG {
            fill(&mut reader, &mut next).map_err(|e| io("cannot read", input, &e))?
        } else {
            0
        };
        let last = next_len == 0;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce(index, last)),
                Payload {
                    msg: &current[..len],
                    aad: b"",
                },
            )
            .map_err(|_| ClientError::AttachmentDigest)?;
        writer
            .write_all(&plain)
            .map_err(|e| io("cannot write", output, &e))?;
        size += plain.len() as u64;
        if last {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        len = next_len;
        index += 1;
    }
    if size != expected_size {
        return Err(ClientError::AttachmentDigest);
    }
    writer
        .into_inner()
        .map_err(|e| io("cannot write", output, e.error()))?
        .sync_all()
        .map_err(|e| io("cannot write", output, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize) -> Result<(), ClientError> {
        let dir = tempfile::tempdir()
            .map_err(|e| ClientError::file("create", &std::env::temp_dir(), e))?;
        let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (p, c, o) = (
            dir.path().join("p"),
            dir.path().join("c"),
            dir.path().join("o"),
        );
        std::fs::write(&p, &plain).map_err(|e| ClientError::file("write", &p, e))?;
        let key = [9u8; 32];
        let sealed = seal_file(&key, &p, &c)?;
        assert_eq!(sealed.size, len as u64);
        assert_eq!(sealed.digest, digest_file(&c)?);
        let chunks = len.div_ceil(CHUNK).max(1);
        assert_eq!(
            std::fs::metadata(&c).map(|m| m.len()).unwrap_or(0),
            (len + chunks * TAG) as u64
        );
        open_file(&key, &c, &o, len as u64)?;
        assert_eq!(std::fs::read(&o).unwrap_or_default(), plain);
        Ok(())
    }

    #[test]
    fn sizes_round_trip() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            assert!(roundtrip(len).is_ok(), "len {len}");
        }
    }

    #[test]
    fn truncation_reordering_and_tampering_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = vec![1u8; 3 * CHUNK];
        let (p, c, o) = (
            dir.path().join("p"),
            dir.path().join("c"),
            dir.path().join("o"),
        );
        std::fs::write(&p, &plain).expect("write");
        let key = [3u8; 32];
        seal_file(&key, &p, &c).expect("seal");
        let sealed = std::fs::read(&c).expect("read");
        let chunk = CHUNK + TAG;
        let cases: Vec<Vec<u8>> = vec![
            // Drop the last chunk: the new last chunk was sealed as "not last".
            sealed[..2 * chunk].to_vec(),
            // Swap the first two chunks.
            [
                &sealed[chunk..2 * chunk],
                &sealed[..chunk],
                &sealed[2 * chunk..],
            ]
            .concat(),
            // Flip one bit.
            {
                let mut t = sealed.clone();
                t[100] ^= 1;
                t
            },
            // Append a copy of the last chunk.
            [&sealed[..], &sealed[2 * chunk..]].concat(),
        ];
        for (i, bad) in cases.into_iter().enumerate() {
            std::fs::write(&c, &bad).expect("write");
            let r = open_file(&key, &c, &o, plain.len() as u64);
            assert!(
                matches!(r, Err(ClientError::AttachmentDigest)),
                "case {i}: {r:?}"
            );
            assert!(!o.exists(), "case {i}: no partial output left");
        }
    }
}
