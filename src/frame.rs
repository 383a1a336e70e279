//! The one frame of postern's tunnel protocol, used at the two points where a peer must say
//! what happened before bytes flow:
//! - the relay answers each platform connection right after the outer TLS handshake;
//! - inside the inner TLS session, the platform names the target it wants ([`Status::Request`])
//!   and the gateway answers before any target byte.
//!
//! ```text
//! +---------+------+----------------+---------------------+
//! | version | code | length (u16 BE)| message (UTF-8)     |
//! |  0x01   |  u8  |   0 ..= 1024   |  what happened      |
//! +---------+------+----------------+---------------------+
//! ```
//! With [`Status::Connected`] the splice follows and every later byte belongs to the inner TLS
//! session; with any other code the relay closes the connection after the frame. So the platform
//! always learns *why* ("gateway edge-7 of org acme is not connected to relay r1") instead of
//! reading stray bytes where it expects a TLS record. Sans-IO: encode to bytes, decode from a
//! buffer.

use std::fmt;

const VERSION: u8 = 1;
/// Longest message carried.
pub const MAX_MESSAGE: usize = 1024;
/// Length of the fixed header.
pub const HEADER: usize = 4;

/// What the relay did with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The relay: the gateway's tunnel accepted a channel, the splice follows. The gateway: the
    /// target is connected (or the ping/health mode is ready).
    Connected,
    /// No tunnel from that gateway is up at this relay.
    NotConnected,
    /// The gateway is revoked.
    Revoked,
    /// A limit (handshakes, connections per tenant) was reached.
    Busy,
    /// The gateway's tunnel did not accept a channel.
    GatewayUnreachable,
    /// The relay or gateway is stopping.
    Stopping,
    /// Platform to gateway: the target wanted (the message is `host:port`).
    Request,
    /// The session certificate does not permit what was asked.
    NotPermitted,
    /// The gateway could not connect to the target.
    TargetUnreachable,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Self::Connected => 0,
            Self::NotConnected => 1,
            Self::Revoked => 2,
            Self::Busy => 3,
            Self::GatewayUnreachable => 4,
            Self::Stopping => 5,
            Self::Request => 6,
            Self::NotPermitted => 7,
            Self::TargetUnreachable => 8,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [
            Self::Connected,
            Self::NotConnected,
            Self::Revoked,
            Self::Busy,
            Self::GatewayUnreachable,
            Self::Stopping,
            Self::Request,
            Self::NotPermitted,
            Self::TargetUnreachable,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }

    /// A short name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::NotConnected => "not_connected",
            Self::Revoked => "revoked",
            Self::Busy => "busy",
            Self::GatewayUnreachable => "gateway_unreachable",
            Self::Stopping => "stopping",
            Self::Request => "request",
            Self::NotPermitted => "not_permitted",
            Self::TargetUnreachable => "target_unreachable",
        }
    }
}

/// A status and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What happened.
    pub status: Status,
    /// Said for a person.
    pub message: String,
}

/// A frame that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Not a version this build reads.
    Version(u8),
    /// An unknown status code.
    Code(u8),
    /// A message longer than [`MAX_MESSAGE`].
    TooLong(usize),
    /// A message that is not UTF-8.
    NotUtf8,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version(v) => write!(f, "relay status frame version {v}; expected {VERSION}"),
            Self::Code(c) => write!(f, "unknown relay status code {c}"),
            Self::TooLong(n) => write!(
                f,
                "relay status message of {n} bytes; at most {MAX_MESSAGE}"
            ),
            Self::NotUtf8 => f.write_str("relay status message is not UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

impl Frame {
    /// A frame; the message is cut to [`MAX_MESSAGE`] bytes at a character boundary.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { status, message }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let len = u16::try_from(self.message.len()).unwrap_or(0);
        let mut out = Vec::with_capacity(HEADER + self.message.len());
        out.push(VERSION);
        out.push(self.status.code());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(
            self.message
                .as_bytes()
                .get(..usize::from(len))
                .unwrap_or_default(),
        );
        out
    }

    /// Decodes a frame at the start of `buf`: `Ok(None)` if more bytes are needed, else the
    /// frame and how many bytes it used (bytes after it belong to the splice).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        let Some(&[version, code, hi, lo]) = buf.get(..HEADER) else {
            return Ok(None);
        };
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let status = Status::from_code(code).ok_or(FrameError::Code(code))?;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > MAX_MESSAGE {
            return Err(FrameError::TooLong(len));
        }
        let Some(text) = buf.get(HEADER..HEADER + len) else {
            return Ok(None);
        };
        let message = std::str::from_utf8(text).map_err(|_| FrameError::NotUtf8)?;
        Ok(Some((Self::new(status, message), HEADER + len)))
    }

    /// Reads one frame from a blocking reader, byte-exact (nothing after it is consumed).
    pub fn read_from(r: &mut impl std::io::Read) -> std::io::Result<Self> {
        let mut header = [0u8; HEADER];
        r.read_exact(&mut header)?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let mut buf = header.to_vec();
        buf.resize(HEADER + len.min(MAX_MESSAGE + 1), 0);
        if let Err(e) = Self::decode(&buf[..HEADER]) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
        if len > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                FrameError::TooLong(len),
            ));
        }
        r.read_exact(&mut buf[HEADER..])?;
        match Self::decode(&buf) {
            Ok(Some((frame, _))) => Ok(frame),
            Ok(None) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_leaves_trailing_bytes() {
        let f = Frame::new(
            Status::NotConnected,
            "gateway g1 of org a is not connected to relay r0",
        );
        let mut wire = f.encode();
        wire.extend_from_slice(b"\x16\x03");
        let (back, used) = Frame::decode(&wire).unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(&wire[used..], b"\x16\x03");
        assert_eq!(Frame::read_from(&mut &wire[..]).unwrap(), f);
    }

    #[test]
    fn partial_input_needs_more() {
        let wire = Frame::new(Status::Connected, "ok").encode();
        for n in 0..wire.len() {
            assert_eq!(Frame::decode(&wire[..n]).unwrap(), None, "{n}");
        }
    }

    #[test]
    fn reject_unknown_version_code_length_and_text() {
        assert_eq!(Frame::decode(&[2, 0, 0, 0]), Err(FrameError::Version(2)));
        assert_eq!(Frame::decode(&[1, 99, 0, 0]), Err(FrameError::Code(99)));
        assert_eq!(Frame::decode(&[1, 9, 0, 0]), Err(FrameError::Code(9)));
        assert_eq!(
            Frame::decode(&[1, 0, 0x04, 0x01]),
            Err(FrameError::TooLong(1025))
        );
        assert_eq!(Frame::decode(&[1, 0, 0, 1, 0xff]), Err(FrameError::NotUtf8));
        // A TLS record where a frame belongs is refused, never taken for data.
        assert!(Frame::decode(&[0x16, 0x03, 0x03, 0x00]).is_err());
        assert!(Frame::read_from(&mut &[1u8, 0, 0x10, 0][..]).is_err());
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let f = Frame::new(Status::Busy, "é".repeat(MAX_MESSAGE));
        assert!(f.message.len() <= MAX_MESSAGE);
        assert!(Frame::decode(&f.encode()).unwrap().is_some());
    }
}
