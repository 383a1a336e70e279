//! A minimal, strict DER reader and writer for postern's own certificate extensions.
//!
//! Only what the extensions use: SEQUENCE, INTEGER (non-negative, at most 8 bytes) and
//! UTF8String, definite lengths in their shortest form. Input is attacker-controlled: every read
//! is bounds-checked, nothing panics, and anything non-canonical is an error.

use std::fmt;

const TAG_INTEGER: u8 = 0x02;
const TAG_UTF8: u8 = 0x0c;
const TAG_SEQUENCE: u8 = 0x30;

/// What is wrong with a DER encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DerError {
    Truncated,
    WrongTag { expected: u8, arrived: u8 },
    NonMinimalLength,
    NonMinimalInteger,
    NegativeInteger,
    IntegerTooLarge,
    NotUtf8,
    TrailingBytes(usize),
}

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("DER ends in the middle of a value"),
            Self::WrongTag { expected, arrived } => {
                write!(f, "expected DER tag {expected:#04x}, found {arrived:#04x}")
            }
            Self::NonMinimalLength => f.write_str("DER length is not in its shortest form"),
            Self::NonMinimalInteger => f.write_str("DER INTEGER is not in its shortest form"),
            Self::NegativeInteger => f.write_str("DER INTEGER is negative"),
            Self::IntegerTooLarge => f.write_str("DER INTEGER does not fit in 64 bits"),
            Self::NotUtf8 => f.write_str("UTF8String holds invalid UTF-8"),
            Self::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the value"),
        }
    }
}

/// Reads DER values in order from a byte slice.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// Succeeds only when every byte has been consumed.
    pub(crate) fn finish(self) -> Result<(), DerError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(DerError::TrailingBytes(n)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DerError> {
        if self.rest.len() < n {
            return Err(DerError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DerError> {
        Ok(self.take(1)?[0])
    }

    fn length(&mut self) -> Result<usize, DerError> {
        let first = self.byte()?;
        if first < 0x80 {
            return Ok(usize::from(first));
        }
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return Err(DerError::NonMinimalLength);
        }
        let bytes = self.take(count)?;
        if bytes[0] == 0 {
            return Err(DerError::NonMinimalLength);
        }
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err(DerError::NonMinimalLength);
        }
        Ok(len)
    }

    fn tlv(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let arrived = self.byte()?;
        if arrived != tag {
            return Err(DerError::WrongTag {
                expected: tag,
                arrived,
            });
        }
        let len = self.length()?;
        self.take(len)
    }

    /// Reads a SEQUENCE and returns a reader over its contents.
    pub(crate) fn sequence(&mut self) -> Result<Reader<'a>, DerError> {
        Ok(Reader::new(self.tlv(TAG_SEQUENCE)?))
    }

    /// Reads a non-negative INTEGER of at most 64 bits.
    pub(crate) fn integer(&mut self) -> Result<u64, DerError> {
        let body = self.tlv(TAG_INTEGER)?;
        let (first, rest) = body.split_first().ok_or(DerError::Truncated)?;
        if first & 0x80 != 0 {
            return Err(DerError::NegativeInteger);
        }
        if *first == 0 && rest.first().is_some_and(|b| b & 0x80 == 0) {
            return Err(DerError::NonMinimalInteger);
        }
        let digits = if *first == 0 { rest } else { body };
        if digits.len() > 8 {
            return Err(DerError::IntegerTooLarge);
        }
        Ok(digits
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Reads a UTF8String.
    pub(crate) fn utf8(&mut self) -> Result<&'a str, DerError> {
        std::str::from_utf8(self.tlv(TAG_UTF8)?).map_err(|_| DerError::NotUtf8)
    }
}

/// Builds DER values into a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    fn tlv(&mut self, tag: u8, body: &[u8]) {
        self.out.push(tag);
        let len = body.len();
        if len < 0x80 {
            self.out
                .push(len.to_be_bytes()[std::mem::size_of::<usize>() - 1]);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            let digits = &bytes[skip..];
            self.out
                .push(0x80 | digits.len().to_be_bytes()[std::mem::size_of::<usize>() - 1]);
            self.out.extend_from_slice(digits);
        }
        self.out.extend_from_slice(body);
    }

    /// Writes a SEQUENCE whose contents `build` writes.
    pub(crate) fn sequence(&mut self, build: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        build(&mut inner);
        self.tlv(TAG_SEQUENCE, &inner.out);
    }

    /// Writes a non-negative INTEGER.
    pub(crate) fn integer(&mut self, value: u64) {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
        let mut body = Vec::with_capacity(9);
        if bytes[skip] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(&bytes[skip..]);
        self.tlv(TAG_INTEGER, &body);
    }

    /// Writes a UTF8String.
    pub(crate) fn utf8(&mut self, value: &str) {
        self.tlv(TAG_UTF8, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_integer(v: u64) -> u64 {
        let mut w = Writer::default();
        w.integer(v);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        let back = r.integer().unwrap();
        r.finish().unwrap();
        back
    }

    #[test]
    fn integers_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            assert_eq!(round_trip_integer(v), v);
        }
    }

    #[test]
    fn long_strings_round_trip() {
        let s = "é".repeat(300);
        let mut w = Writer::default();
        w.sequence(|w| w.utf8(&s));
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        let mut seq = r.sequence().unwrap();
        assert_eq!(seq.utf8().unwrap(), s);
        seq.finish().unwrap();
        r.finish().unwrap();
    }

    #[test]
    fn rejects_non_canonical_encodings() {
        let cases: &[(&[u8], DerError)] = &[
            (&[0x02, 0x02, 0x00, 0x01], DerError::NonMinimalInteger),
            (&[0x02, 0x01, 0x80], DerError::NegativeInteger),
            (&[0x02, 0x00], DerError::Truncated),
            (&[0x02, 0x81, 0x01, 0x01], DerError::NonMinimalLength),
            (&[0x02, 0x80], DerError::NonMinimalLength),
            (&[0x02, 0x05, 0x01], DerError::Truncated),
            (
                &[0x0c, 0x01, 0x01],
                DerError::WrongTag {
                    expected: 0x02,
                    arrived: 0x0c,
                },
            ),
            (
                &[0x02, 0x09, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                DerError::IntegerTooLarge,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                Reader::new(bytes).integer().unwrap_err(),
                *want,
                "{bytes:02x?}"
            );
        }
        let mut r = Reader::new(&[0x02, 0x01, 0x01, 0x00]);
        r.integer().unwrap();
        assert_eq!(r.finish().unwrap_err(), DerError::TrailingBytes(1));
        assert_eq!(
            Reader::new(&[0x0c, 0x01, 0xff]).utf8().unwrap_err(),
            DerError::NotUtf8
        );
    }
}
