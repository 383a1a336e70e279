//! The platform API's wire format: JSON bodies, shared by the server and [`super::client`].
//!
//! | method and path            | token    | body                  | reply                 |
//! |----------------------------|----------|-----------------------|-----------------------|
//! | `GET /v1/health`           | none     |                       | `{"status":"ok"}`     |
//! | `POST /v1/relay/register`  | relay    | [`RelayRegistration`] | [`RelayCredentials`]  |
//! | `POST /v1/relay/renew`     | relay    | [`RelayRegistration`] | [`RelayCredentials`]  |
//! | `POST /v1/relay/heartbeat` | relay    | [`RelayHeartbeat`]    | [`HeartbeatReply`]    |
//! | `GET /v1/revocations`      | relay    |                       | [`Revocations`]       |
//! | `POST /v1/gateway/register`| gateway  | [`GatewayRegistration`]| [`GatewayCredentials`]|
//! | `POST /v1/gateway/renew`   | gateway  | [`GatewayRegistration`]| [`GatewayCredentials`]|
//! | `POST /v1/gateway/heartbeat`| gateway | [`GatewayHeartbeat`]  | [`HeartbeatReply`]    |
//! | `POST /v1/session`         | operator | [`SessionRequest`]    | [`SessionCredentials`]|
//!
//! Tokens go in `Authorization: Bearer ptk1.<id>.<secret>`. Request bodies are parsed strictly:
//! an unknown field, a missing one or one of the wrong type is refused with 400 and
//! `{"error": {"field": "<name>", "problem": "<what was expected and what arrived>"}}`; every
//! other refusal has the same shape (with `"field": null` when no one field is to blame).
//! Times are Unix seconds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::http::Response;

/// A relay asking for (or renewing) its certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegistration {
    /// Its SSH host public key, OpenSSH format (`ssh-ed25519 AAAA…`).
    pub ssh_host_key: String,
    /// Its TLS key: a PEM `PUBLIC KEY` or `CERTIFICATE REQUEST` (Ed25519 or P-256).
    pub tls_public_key: String,
    /// Names gateways and platforms use to reach it (DNS names or IP addresses), 1 to 16.
    pub hostnames: Vec<String>,
    /// `host:port` where gateways dial its SSH side.
    pub ssh_address: String,
    /// `host:port` where platforms dial its TLS side.
    pub tls_address: String,
    /// Optional consistency check: the organisation the relay believes it belongs to
    /// (absent for an instance relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// What a relay receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCredentials {
    /// The relay's name.
    pub relay: String,
    /// Its organisation, or `None` for an instance relay.
    pub org: Option<String>,
    /// Its SSH host certificate (OpenSSH format).
    pub ssh_host_certificate: String,
    /// The relay SSH Client CA whose user certificates it accepts from gateways.
    pub ssh_user_ca: String,
    /// Its TLS chain, leaf first, then the relay PKI Server CA (PEM).
    pub tls_chain: Vec<String>,
    /// The relay PKI Client CA whose client certificates it accepts from platforms (PEM).
    pub tls_client_ca: String,
    /// When the certificates expire.
    pub not_after: u64,
    /// When to renew them.
    pub renew_after: u64,
    /// How often to send a heartbeat and poll revocations, in seconds.
    pub heartbeat_secs: u64,
}

/// A gateway asking for (or renewing) its certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRegistration {
    /// Its SSH public key, OpenSSH format.
    pub ssh_public_key: String,
    /// Its TLS key: a PEM `PUBLIC KEY` or `CERTIFICATE REQUEST` (Ed25519 or P-256).
    pub tls_public_key: String,
    /// Optional consistency check: the organisation the gateway believes it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// Where to reach a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayEndpoint {
    /// Its name.
    pub name: String,
    /// Its organisation, or `None` for an instance relay.
    pub org: Option<String>,
    /// `host:port` of its SSH side.
    pub ssh_address: String,
    /// `host:port` of its TLS side.
    pub tls_address: String,
    /// The names in its certificates.
    pub hostnames: Vec<String>,
}

/// What a gateway receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCredentials {
    /// Its organisation.
    pub org: String,
    /// Its name (the gateway id).
    pub gateway: String,
    /// The relays it may use, the assigned one first; all share one SSH Client CA.
    pub relays: Vec<RelayEndpoint>,
    /// Its SSH user certificate (OpenSSH format).
    pub ssh_certificate: String,
    /// The relay SSH Server CA its relays' host certificates must chain to (OpenSSH).
    pub relay_host_ca: String,
    /// Its TLS chain, leaf first, then the org Gateway Server CA (PEM).
    pub tls_chain: Vec<String>,
    /// The org Gateway Client CA whose session certificates it accepts (PEM).
    pub gateway_client_ca: String,
    /// When the certificates expire.
    pub not_after: u64,
    /// When to renew them.
    pub renew_after: u64,
    /// How often to send a heartbeat, in seconds.
    pub heartbeat_secs: u64,
}

/// An operator asking for one session's certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The gateway to reach (in the operator's organisation).
    pub gateway: String,
    /// `host:port` behind the gateway.
    pub target: String,
    /// Lifetime of the certificates, 1 s up to the platform's maximum.
    pub ttl_secs: u64,
    /// Public key (PEM) for the platform→relay client certificate.
    pub relay_client_key: String,
    /// Public key (PEM) for the platform→gateway client certificate.
    pub gateway_client_key: String,
}

/// What an operator receives for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCredentials {
    /// The session id written into the certificate.
    pub session_id: String,
    /// The organisation.
    pub org: String,
    /// The gateway.
    pub gateway: String,
    /// The permitted target.
    pub target: String,
    /// The relay to dial.
    pub relay: RelayEndpoint,
    /// Client certificate toward the relay (PEM).
    pub relay_client_certificate: String,
    /// Client certificate toward the gateway, with the permission (PEM).
    pub gateway_client_certificate: String,
    /// The relay PKI Server CA to verify the relay with (PEM).
    pub relay_server_ca: String,
    /// The org Gateway Server CA to verify the gateway with (PEM).
    pub gateway_server_ca: String,
    /// The name the gateway's certificate must carry.
    pub gateway_pin: String,
    /// When the certificates expire.
    pub not_after: u64,
}

/// A relay's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHeartbeat {
    /// Tunnels currently up.
    pub tunnels: u64,
}

/// A gateway's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHeartbeat {
    /// The relay whose tunnel is up, if any.
    pub connected_relay: Option<String>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// For a gateway: the relay it should use now. When this differs from the relay it was
    /// given at registration, it should renew to get certificates for the new one.
    pub assigned_relay: Option<String>,
    /// Seconds until the next heartbeat.
    pub heartbeat_secs: u64,
}

/// A revoked gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedGateway {
    /// Its organisation.
    pub org: String,
    /// Its name.
    pub gateway: String,
    /// When it was revoked.
    pub revoked_at: u64,
}

/// The revocation list a relay polls: gateways whose tunnels it must drop and refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// Revoked gateways the relay could serve (all orgs for an instance relay).
    pub gateways: Vec<RevokedGateway>,
    /// Seconds until the next poll.
    pub poll_secs: u64,
}

/// A refusal: status, the field to blame (if one is) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The request field at fault.
    pub field: Option<String>,
    /// What was expected and what arrived.
    pub problem: String,
    /// For 429: seconds to wait.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A refusal not tied to one field.
    pub fn new(status: u16, problem: impl Into<String>) -> Self {
        Self {
            status,
            field: None,
            problem: problem.into(),
            retry_after: None,
        }
    }

    /// 400 for one field.
    pub fn field(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(400, problem)
        }
    }

    /// The HTTP response.
    pub fn response(&self) -> Response {
        let mut r = Response::error(self.status, self.field.as_deref(), &self.problem);
        r.retry_after = self.retry_after;
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} (field {field}): {}", self.status, self.problem),
            None => write!(f, "{}: {}", self.status, self.problem),
        }
    }
}

impl std::error::Error for ApiError {}

/// A request body as a strict JSON object: unknown fields are refused up front, and each field
/// is taken with the type it must have, so every error names its field.
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Fields {
    /// Parses `body` as a JSON object whose keys are all in `allowed`.
    pub fn parse(body: &[u8], allowed: &[&str]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, format!("the body is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(ApiError::new(
                400,
                format!("expected a JSON object, found {}", kind(&value)),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::field(
                unknown,
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            ));
        }
        Ok(Self { map })
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    /// A required string.
    pub fn string(&mut self, name: &str) -> Result<String, ApiError> {
        self.opt_string(name)?
            .ok_or_else(|| ApiError::field(name, "missing; expected a string"))
    }

    /// An optional string.
    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::field(
                name,
                format!("expected a string, found {}", kind(&v)),
            )),
        }
    }

    /// A required non-negative integer.
    pub fn u64(&mut self, name: &str) -> Result<u64, ApiError> {
        match self.take(name) {
            None => Err(ApiError::field(name, "missing; expected an integer")),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                ApiError::field(name, format!("expected a non-negative integer, found {n}"))
            }),
            Some(v) => Err(ApiError::field(
                name,
                format!("expected an integer, found {}", kind(&v)),
            )),
        }
    }

    /// A required array of 1 to `max` strings.
    pub fn strings(&mut self, name: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let items = match self.take(name) {
            None => {
                return Err(ApiError::field(
                    name,
                    "missing; expected an array of strings",
                ))
            }
            Some(Value::Array(items)) => items,
            Some(v) => {
                return Err(ApiError::field(
                    name,
                    format!("expected an array of strings, found {}", kind(&v)),
                ))
            }
        };
        if items.is_empty() || items.len() > max {
            return Err(ApiError::field(
                name,
                format!("expected 1 to {max} entries, found {}", items.len()),
            ));
        }
        items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(ApiError::field(
                    name,
                    format!("expected only strings, found {}", kind(&other)),
                )),
            })
            .collect()
    }
}

/// Parses and validates one request type from a body.
pub trait FromBody: Sized {
    /// The fields the type accepts.
    const FIELDS: &'static [&'static str];
    /// Builds the value from checked fields.
    fn from_fields(f: &mut Fields) -> Result<Self, ApiError>;
    /// Parses `body`.
    fn from_body(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_fields(&mut Fields::parse(body, Self::FIELDS)?)
    }
}

impl FromBody for RelayRegistration {
    const FIELDS: &'static [&'static str] = &[
        "ssh_host_key",
        "tls_public_key",
        "hostnames",
        "ssh_address",
        "tls_address",
        "org",
    ];
    fn from_fields(f: &mut Fields) -> Result<Self, ApiError> {
        Ok(Self {
            ssh_host_key: f.string("ssh_host_key")?,
            tls_public_key: f.string("tls_public_key")?,
            hostnames: f.strings("hostnames", 16)?,
            ssh_address: f.string("ssh_address")?,
            tls_address: f.string("tls_address")?,
            org: f.opt_string("org")?,
        })
    }
}

impl FromBody for GatewayRegistration {
    const FIELDS: &'static [&'static str] = &["ssh_public_key", "tls_public_key", "org"];
    fn from_fields(f: &mut Fields) -> Result<Self, ApiError> {
        Ok(Self {
            ssh_public_key: f.string("ssh_public_key")?,
            tls_public_key: f.string("tls_public_key")?,
            org: f.opt_string("org")?,
        })
    }
}

impl FromBody for SessionRequest {
    const FIELDS: &'static [&'static str] = &[
        "gateway",
        "target",
        "ttl_secs",
        "relay_client_key",
        "gateway_client_key",
    ];
    fn from_fields(f: &mut Fields) -> Result<Self, ApiError> {
        Ok(Self {
            gateway: f.string("gateway")?,
            target: f.string("target")?,
            ttl_secs: f.u64("ttl_secs")?,
            relay_client_key: f.string("relay_client_key")?,
            gateway_client_key: f.string("gateway_client_key")?,
        })
    }
}

impl FromBody for RelayHeartbeat {
    const FIELDS: &'static [&'static str] = &["tunnels"];
    fn from_fields(f: &mut Fields) -> Result<Self, ApiError> {
        Ok(Self {
            tunnels: f.u64("tunnels")?,
        })
    }
}

impl FromBody for GatewayHeartbeat {
    const FIELDS: &'static [&'static str] = &["connected_relay"];
    fn from_fields(f: &mut Fields) -> Result<Self, ApiError> {
        Ok(Self {
            connected_relay: f.opt_string("connected_relay")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ApiError {
        r.expect_err("accepted")
    }

    #[test]
    fn parses_a_session_request() {
        let body = br#"{"gateway":"gw1","target":"db:5432","ttl_secs":60,
            "relay_client_key":"k1","gateway_client_key":"k2"}"#;
        let r = SessionRequest::from_body(body).unwrap();
        assert_eq!(r.ttl_secs, 60);
        assert_eq!(r.target, "db:5432");
    }

    #[test]
    fn reject_unknown_field_by_name() {
        let e = err(GatewayHeartbeat::from_body(
            br#"{"connected_relay":null,"x":1}"#,
        ));
        assert_eq!((e.status, e.field.as_deref()), (400, Some("x")));
    }

    #[test]
    fn reject_wrong_type_by_name() {
        let e = err(RelayHeartbeat::from_body(br#"{"tunnels":"3"}"#));
        assert_eq!(e.field.as_deref(), Some("tunnels"));
        assert!(e.problem.contains("found a string"), "{}", e.problem);
        let e = err(RelayHeartbeat::from_body(br#"{"tunnels":-1}"#));
        assert_eq!(e.field.as_deref(), Some("tunnels"));
        let e = err(GatewayRegistration::from_body(
            br#"{"ssh_public_key":1,"tls_public_key":"k"}"#,
        ));
        assert_eq!(e.field.as_deref(), Some("ssh_public_key"));
    }

    #[test]
    fn reject_missing_field_by_name() {
        let e = err(GatewayRegistration::from_body(br#"{"ssh_public_key":"k"}"#));
        assert_eq!(e.field.as_deref(), Some("tls_public_key"));
        assert!(e.problem.starts_with("missing"));
    }

    #[test]
    fn reject_bad_hostname_lists() {
        let base =
            r#""ssh_host_key":"k","tls_public_key":"k","ssh_address":"a:1","tls_address":"a:2""#;
        for (hosts, needle) in [
            ("[]", "1 to 16"),
            ("[1]", "only strings"),
            ("\"h\"", "array"),
        ] {
            let body = format!("{{{base},\"hostnames\":{hosts}}}");
            let e = err(RelayRegistration::from_body(body.as_bytes()));
            assert_eq!(e.field.as_deref(), Some("hostnames"));
            assert!(e.problem.contains(needle), "{}", e.problem);
        }
    }

    #[test]
    fn reject_malformed_json_and_non_objects() {
        for body in [&b"{"[..], b"[]", b"\"x\"", b"", b"\xff"] {
            let e = err(RelayHeartbeat::from_body(body));
            assert_eq!((e.status, e.field.clone()), (400, None), "{body:?}");
        }
    }

    #[test]
    fn client_bodies_parse_back_on_the_server() {
        let reg = RelayRegistration {
            ssh_host_key: "k".into(),
            tls_public_key: "t".into(),
            hostnames: vec!["h".into()],
            ssh_address: "h:22".into(),
            tls_address: "h:443".into(),
            org: None,
        };
        let body = serde_json::to_vec(&reg).unwrap();
        assert_eq!(RelayRegistration::from_body(&body).unwrap(), reg);
    }
}
