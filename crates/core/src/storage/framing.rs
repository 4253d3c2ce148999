//! Length-prefixed byte framing shared by snapshots and stored lists.
//!
//! A frame is a big-endian `u64` length followed by that many bytes. The
//! reader never panics and never allocates: it only hands out sub-slices of
//! its input, so a hostile length can claim at most what is really there.

/// Appends `bytes` to `out` as one frame.
pub(super) fn put_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    // `usize` is at most 64 bits on every target Rust supports, so this
    // conversion is lossless.
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a list of byte strings as consecutive frames.
pub(super) fn encode_list(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|item| 8 + item.len()).sum());
    for item in items {
        put_frame(&mut out, item);
    }
    out
}

/// Decodes consecutive frames; `None` if the input is not exactly a list.
pub(super) fn decode_list(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut reader = Reader::new(bytes);
    let mut items = Vec::new();
    while !reader.is_empty() {
        items.push(reader.frame()?.to_vec());
    }
    Some(items)
}

/// A cursor over untrusted input. Every method returns `None` when the input
/// is too short instead of panicking.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Takes the next `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    pub(super) fn u64(&mut self) -> Option<u64> {
        let bytes: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }

    /// Takes one frame. A length beyond the remaining input fails before
    /// anything is allocated.
    pub(super) fn frame(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_round_trips() {
        let items = vec![vec![], vec![1, 2, 3], vec![0; 300]];
        assert_eq!(decode_list(&encode_list(&items)), Some(items));
        assert_eq!(decode_list(&[]), Some(vec![]));
    }

    #[test]
    fn truncated_or_oversized_frames_are_rejected() {
        let encoded = encode_list(&[vec![7; 10]]);
        for cut in 1..encoded.len() {
            assert_eq!(decode_list(&encoded[..cut]), None, "cut at {cut}");
        }
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.push(0);
        assert_eq!(decode_list(&huge), None);
    }
}
