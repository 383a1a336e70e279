//! postern: reach TCP services inside private networks with no inbound port on those networks.
//!
//! ```text
//!  platform ──mTLS──▶ relay ◀──SSH (dialled out)── gateway ──TCP──▶ target
//!     │  (relay PKI CAs)   │   (relay SSH CAs)        │
//!     └──────── inner mTLS 1.3, end to end ───────────┘
//!              (org Gateway Client/Server CAs)
//! ```
//!
//! The relay authenticates both sides and splices bytes; it never holds the inner session's keys.
//! Ten certificate authorities make tenant isolation cryptographic (see [`pki`]).
//!
//! Layers, highest first:
//! - [`pki`]: the authorities, their storage, leaf issuance and postern's X.509 extensions;
//! - [`sshcert`]: the SSH certificate policy gateways and relays apply to each other;
//! - [`tls`]: pinned rustls configurations for the four TLS endpoints;
//! - [`cipher`]: which AEADs the TLS and SSH hops offer, in which order;
//! - [`id`] and [`clock`]: identifiers and time as messages show them.
#![forbid(unsafe_code)]

pub mod cipher;
pub mod cli;
pub mod clock;
pub mod enrol;
pub mod frame;
pub mod gateway;
pub mod id;
pub mod notify;
pub mod pki;
pub mod platform;
pub mod relay;
pub mod sshcert;
pub mod tls;

#[cfg(test)]
mod refusal_matrix;
#[cfg(test)]
mod testkit;
