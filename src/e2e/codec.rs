//! The canonical binary encoding of announcements and grants.
//!
//! Every variable-length field is a big-endian `u16` length followed by
//! its bytes; integers are big-endian and fixed-size. There is exactly one
//! encoding of each value, so the signed bytes are the parsed bytes and
//! nothing has to be re-encoded to check a signature. The reader is strict:
//! a short field, an over-long field or trailing bytes are errors, never
//! panics.

/// Why canonical bytes could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("truncated at byte {at}")]
    Truncated {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A field is longer than its limit.
    #[error("field of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field is not UTF-8.
    #[error("text field is not UTF-8")]
    NotUtf8,
}

/// Appends canonical fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn fixed(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A length-prefixed field. Callers bound their inputs far below
    /// `u16::MAX`; a longer value would be a bug, so it is refused loudly.
    pub(crate) fn var(&mut self, v: &[u8]) -> Result<&mut Self, CodecError> {
        let len = u16::try_from(v.len())
            .map_err(|_| CodecError::TooLong { len: v.len(), max: u16::MAX as usize })?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(v);
        Ok(self)
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical fields from a slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn fixed(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(CodecError::Truncated { at: self.pos })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.fixed(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array::<8>()?))
    }

    /// A length-prefixed field of at most `max` bytes; the limit is checked
    /// before anything is sliced.
    pub(crate) fn var(&mut self, max: usize) -> Result<&'a [u8], CodecError> {
        let len = u16::from_be_bytes(self.array::<2>()?) as usize;
        if len > max {
            return Err(CodecError::TooLong { len, max });
        }
        self.fixed(len)
    }

    pub(crate) fn text(&mut self, max: usize) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.var(max)?).map_err(|_| CodecError::NotUtf8)
    }

    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let mut w = Writer::new();
        w.u8(7).u64(42).fixed(&[1, 2]);
        w.var(b"abc").unwrap();
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u64().unwrap(), 42);
        assert_eq!(r.array::<2>().unwrap(), [1, 2]);
        assert_eq!(r.text(3).unwrap(), "abc");
        r.finish().unwrap();

        let mut r = Reader::new(&bytes[..bytes.len() - 1]);
        r.fixed(11).unwrap();
        assert_eq!(r.var(10), Err(CodecError::Truncated { at: 13 }));

        let mut r = Reader::new(&bytes);
        r.fixed(11).unwrap();
        assert_eq!(r.var(2), Err(CodecError::TooLong { len: 3, max: 2 }));

        let mut long = bytes.clone();
        long.push(0);
        let mut r = Reader::new(&long);
        r.fixed(bytes.len()).unwrap();
        assert_eq!(r.finish(), Err(CodecError::Trailing(1)));
    }
}
