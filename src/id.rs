//! Names of the things postern routes between: organisations, gateways and relays.
//!
//! Every identifier that travels inside a certificate is one of these types, and each is checked
//! on the way in, so a certificate can never smuggle a separator, a wildcard or a second DNS label
//! into a name postern builds from it (SAN pins, SSH key ids, file paths).
//!
//! Rules: 1 to 63 bytes of `a-z`, `0-9` and `-`, not starting or ending with `-`: a DNS label.

use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier was empty.
    Empty {
        /// Which kind of identifier was expected.
        kind: &'static str,
    },
    /// The identifier was longer than a DNS label allows.
    TooLong {
        /// Which kind of identifier was expected.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The identifier holds a character outside `a-z0-9-` or has a hyphen at an end.
    BadCharacter {
        /// Which kind of identifier was expected.
        kind: &'static str,
        /// The identifier as it arrived (escaped for display).
        value: String,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { kind } => write!(f, "{kind} id is empty; expected 1 to 63 of a-z 0-9 -"),
            Self::TooLong { kind, len } => {
                write!(f, "{kind} id is {len} bytes long; at most 63 are allowed")
            }
            Self::BadCharacter { kind, value } => write!(
                f,
                "{kind} id {value:?} is not a DNS label; expected a-z 0-9 and inner hyphens only"
            ),
        }
    }
}

impl std::error::Error for IdError {}

fn check_label(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > 63 {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
        });
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !value.bytes().all(allowed) || value.starts_with('-') || value.ends_with('-') {
        return Err(IdError::BadCharacter {
            kind,
            value: value.escape_debug().to_string(),
        });
    }
    Ok(())
}

macro_rules! label_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: &str) -> Result<Self, IdError> {
                check_label($kind, value)?;
                Ok(Self(value.to_owned()))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

label_id!(
    /// An organisation (tenant).
    OrgId,
    "organisation"
);
label_id!(
    /// A gateway, unique within its organisation.
    GatewayId,
    "gateway"
);
label_id!(
    /// A relay.
    RelayId,
    "relay"
);

/// The DNS name the platform pins when it opens the inner TLS session to one gateway.
///
/// It appears as the only SAN of the gateway's TLS server certificate and as the SNI the platform
/// sends, so a certificate issued to another gateway of the same organisation does not match.
pub fn gateway_pin_name(org: &OrgId, gateway: &GatewayId) -> String {
    format!("{gateway}.{org}.gateway.postern.internal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "acme", "edge-7", "0", &"x".repeat(63)] {
            assert!(OrgId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "x".repeat(64);
        for bad in [
            "", "-a", "a-", "A", "a.b", "a/b", "a b", "é", "a:b", "*", &long,
        ] {
            assert!(GatewayId::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn pin_name_is_per_gateway() {
        let org = OrgId::new("acme").unwrap();
        let a = gateway_pin_name(&org, &GatewayId::new("a").unwrap());
        let b = gateway_pin_name(&org, &GatewayId::new("b").unwrap());
        assert_ne!(a, b);
        assert_eq!(a, "a.acme.gateway.postern.internal");
    }
}

label_id!(
    /// A person or program allowed to open sessions to its organisation's gateways.
    OperatorId,
    "operator"
);
