//! Machine and operator credentials, and the string that carries them with the API's pin.
//!
//! A token is `ptk1.<id>.<secret>`: a 16-hex-digit lookup id and 32 random bytes in hex. The
//! platform keeps only SHA-256 of the secret and compares digests in constant time, so a copy of
//! the database does not let anyone authenticate.
//!
//! What an operator hands to a gateway, relay or `connect` is the *enrolment string*:
//! `ptk1.<id>.<secret>.<sha256 of the API CA certificate>`. The last part pins the platform API
//! (in the spirit of kubeadm's discovery hash): the client trusts exactly the CA certificate with
//! that digest, found in the chain the API presents, and nothing else.

use std::fmt;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "ptk1";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;

/// Why a token or enrolment string was not accepted. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Not `ptk1.<id>.<secret>` (or with `.<fingerprint>` for an enrolment string).
    Format(&'static str),
    /// The system random generator failed.
    Random,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(what) => write!(f, "malformed token: {what}"),
            Self::Random => f.write_str("the system random generator failed"),
        }
    }
}

impl std::error::Error for TokenError {}

/// The role a token authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A gateway (always in an organisation).
    Gateway,
    /// A relay: an instance relay (no organisation) or an organisation's own relay.
    Relay,
    /// An operator who opens sessions to its organisation's gateways.
    Operator,
}

impl Role {
    /// The name used on the command line, in the database and in API errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Relay => "relay",
            Self::Operator => "operator",
        }
    }

    /// The inverse of [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Gateway, Self::Relay, Self::Operator]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A credential. `Debug` shows the id only; the secret leaves only through [`Token::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: [u8; SECRET_LEN],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.…)", self.id)
    }
}

impl Token {
    /// A fresh random token.
    pub fn generate() -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut id).map_err(|_| TokenError::Random)?;
        rng.fill(&mut secret).map_err(|_| TokenError::Random)?;
        Ok(Self {
            id: hex(&id),
            secret,
        })
    }

    /// Parses `ptk1.<id>.<secret>`.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut parts = text.trim().split('.');
        let token = Self::from_parts(&mut parts)?;
        match parts.next() {
            None => Ok(token),
            Some(_) => Err(TokenError::Format(
                "expected ptk1.<id>.<secret>, found more parts",
            )),
        }
    }

    fn from_parts<'a>(parts: &mut impl Iterator<Item = &'a str>) -> Result<Self, TokenError> {
        if parts.next() != Some(PREFIX) {
            return Err(TokenError::Format("expected it to start with \"ptk1.\""));
        }
        let id = parts
            .next()
            .filter(|id| id.len() == 2 * ID_LEN && is_lower_hex(id))
            .ok_or(TokenError::Format("expected a 16-hex-digit id"))?;
        let secret = parts
            .next()
            .and_then(unhex::<SECRET_LEN>)
            .ok_or(TokenError::Format("expected a 64-hex-digit secret"))?;
        Ok(Self {
            id: id.to_owned(),
            secret,
        })
    }

    /// The public lookup id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole token, for printing it once or sending it as a bearer credential.
    pub fn expose(&self) -> String {
        format!("{PREFIX}.{}.{}", self.id, hex(&self.secret))
    }

    /// What the platform stores: SHA-256 of the secret.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&self.secret)
    }

    /// Whether this token's secret hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        constant_time_eq(&self.digest(), stored)
    }
}

/// A token together with the fingerprint of the platform API's CA certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The credential.
    pub token: Token,
    /// SHA-256 of the API CA certificate (DER).
    pub api_ca: [u8; 32],
}

impl fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Enrolment({:?}, api CA {})",
            self.token,
            hex(&self.api_ca)
        )
    }
}

impl Enrolment {
    /// Parses `ptk1.<id>.<secret>.<fingerprint>`.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut parts = text.trim().split('.');
        let token = Token::from_parts(&mut parts)?;
        let api_ca = parts
            .next()
            .and_then(unhex::<32>)
            .ok_or(TokenError::Format(
                "expected ptk1.<id>.<secret>.<64-hex-digit API CA fingerprint>",
            ))?;
        if parts.next().is_some() {
            return Err(TokenError::Format("expected four dot-separated parts"));
        }
        Ok(Self { token, api_ca })
    }

    /// The string to hand to the gateway, relay or operator. It contains the secret.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.token.expose(), hex(&self.api_ca))
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equality whose running time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_matches_its_digest() {
        let t = Token::generate().unwrap();
        let back = Token::parse(&t.expose()).unwrap();
        assert_eq!(back, t);
        assert!(back.matches(&t.digest()));
        assert!(!format!("{t:?}").contains(&hex(&t.secret)));
    }

    #[test]
    fn reject_token_with_other_secret() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert!(!b.matches(&a.digest()));
        assert!(!a.matches(&a.digest()[..31]));
    }

    #[test]
    fn reject_malformed_tokens() {
        let good = Token::generate().unwrap().expose();
        for bad in [
            "",
            "ptk1",
            "ptk2.0011223344556677.00",
            &good.replace("ptk1", "ptk2"),
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &format!("{good}.extra"),
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn enrolment_carries_the_api_pin() {
        let token = Token::generate().unwrap();
        let e = Enrolment {
            token: token.clone(),
            api_ca: sha256(b"ca"),
        };
        let parsed = Enrolment::parse(&e.expose()).unwrap();
        assert_eq!(parsed, e);
        assert!(Enrolment::parse(&token.expose()).is_err());
        assert!(Enrolment::parse(&format!("{}.{}", e.expose(), "00")).is_err());
        assert!(Token::parse(&e.expose()).is_err());
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Gateway, Role::Relay, Role::Operator] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }
}
