//! The platform: postern's control plane.
//!
//! It holds the ten kinds of authorities and the registry, and it is the only place that signs.
//! Gateways, relays and operators reach it over an HTTPS JSON API ([`api`]) authenticated by
//! tokens ([`token`]); the registry lives behind the [`store::Store`] trait ([`sqlite`] by
//! default).

pub mod sqlite;
pub mod store;
pub mod token;
pub mod limit;
pub mod http;
pub mod api;
