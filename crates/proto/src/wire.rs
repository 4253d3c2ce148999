//! A tiny bounds-checked binary reader and writer for Sotto's own signed structures.
//!
//! Signed data needs one canonical encoding; serde formats do not promise that. Every
//! read checks the remaining length first, so no input can make it panic or allocate
//! more than the input's size.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("input ended early while reading {0}")]
    Truncated(&'static str),
    /// Bytes were left after the structure.
    #[error("{0} unexpected bytes after the end")]
    TrailingBytes(usize),
    /// A format version this code does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// The structure.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// A field's value is not allowed.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Appends canonical encodings to a buffer.
#[derive(Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Bytes with a u16 length prefix. Callers only pass values whose length is
    /// bounded well below 65,536 (usernames, certificates); longer input is cut to
    /// keep the encoding well formed, and the signature over it then fails to verify.
    pub(crate) fn bytes16(&mut self, v: &[u8]) -> &mut Self {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.raw(&v[..usize::from(len)])
    }
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Reads canonical encodings from a slice.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input }
    }
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.input.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated(what))
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }
    pub(crate) fn bytes16(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }
    pub(crate) fn remaining(&self) -> usize {
        self.input.len()
    }
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.input.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
