//! The platform: postern's control plane.
//!
//! It holds the authorities and the registry, and it is the only place that signs. Gateways,
//! relays and operators reach it over an HTTPS JSON API ([`api`], served by [`service`] through
//! [`http`]) authenticated by tokens ([`token`]); the registry lives behind the
//! [`store::Store`] trait ([`sqlite`] by default); [`admin`] holds what the command line does.
//!
//! Trust bootstrap: every token is handed out as an enrolment string that ends with the SHA-256
//! of the API's CA certificate; [`client`] pins that certificate and nothing else.

pub mod admin;
pub mod api;
pub mod assign;
pub mod client;
pub mod dial;
pub mod dialer;
pub mod http;
pub mod limit;
pub mod pipe;
pub mod service;
pub mod sqlite;
pub mod state;
pub mod store;
pub mod token;

use std::fmt;

use crate::pki::PkiError;
use store::StoreError;

/// A failure of the platform's own operations (not of one API request).
#[derive(Debug)]
#[non_exhaustive]
pub enum PlatformError {
    /// An authority could not be created, loaded or used.
    Pki(PkiError),
    /// The registry failed.
    Store(StoreError),
    /// The state directory is missing, initialised already, or unreadable.
    State(String),
    /// The command line asked for something impossible.
    Usage(String),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pki(e) => write!(f, "{e}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::State(m) | Self::Usage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PlatformError {}

impl From<PkiError> for PlatformError {
    fn from(e: PkiError) -> Self {
        Self::Pki(e)
    }
}

impl From<StoreError> for PlatformError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}
