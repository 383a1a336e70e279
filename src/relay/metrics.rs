//! Counters the relay exposes in Prometheus text format, and why connections were refused.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why the relay refused something. Each is its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An SSH client failed authentication (wrong CA, expired, plain key, password, …).
    SshAuth,
    /// An authenticated gateway asked for something other than its own reverse forward.
    SshRequest,
    /// An SSH client did not authenticate in time.
    SshTimeout,
    /// A platform's TLS handshake failed (certificate refused, timeout, not TLS).
    TlsHandshake,
    /// The gateway named by the certificate has no tunnel here.
    NotConnected,
    /// The gateway is revoked.
    Revoked,
    /// A handshake or per-tenant limit was reached.
    Busy,
    /// The gateway's tunnel did not open a channel.
    GatewayUnreachable,
}

const ALL: [Refusal; 8] = [
    Refusal::SshAuth,
    Refusal::SshRequest,
    Refusal::SshTimeout,
    Refusal::TlsHandshake,
    Refusal::NotConnected,
    Refusal::Revoked,
    Refusal::Busy,
    Refusal::GatewayUnreachable,
];

impl Refusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SshAuth => "ssh_auth",
            Self::SshRequest => "ssh_request",
            Self::SshTimeout => "ssh_timeout",
            Self::TlsHandshake => "tls_handshake",
            Self::NotConnected => "not_connected",
            Self::Revoked => "revoked",
            Self::Busy => "busy",
            Self::GatewayUnreachable => "gateway_unreachable",
        }
    }

    fn index(self) -> usize {
        ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Splices in progress.
    pub splices_active: AtomicU64,
    /// Splices started.
    pub splices_total: AtomicU64,
    /// Bytes copied from platforms to gateways.
    pub bytes_to_gateway: AtomicU64,
    /// Bytes copied from gateways to platforms.
    pub bytes_to_platform: AtomicU64,
    refusals: [AtomicU64; 8],
}

impl Metrics {
    /// Counts one refusal.
    pub fn refuse(&self, why: Refusal) {
        if let Some(c) = self.refusals.get(why.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals so far for `why`.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refusals
            .get(why.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition, with the tunnel gauges passed in.
    pub fn render(&self, tunnels: usize, gateways: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{value}");
        };
        metric(
            "postern_relay_tunnels",
            "gauge",
            "SSH tunnels up.",
            format!("postern_relay_tunnels {tunnels}"),
        );
        metric(
            "postern_relay_gateways",
            "gauge",
            "Gateways with a tunnel up.",
            format!("postern_relay_gateways {gateways}"),
        );
        metric(
            "postern_relay_splices_active",
            "gauge",
            "Platform connections being spliced.",
            format!("postern_relay_splices_active {}", get(&self.splices_active)),
        );
        metric(
            "postern_relay_splices_total",
            "counter",
            "Platform connections spliced.",
            format!("postern_relay_splices_total {}", get(&self.splices_total)),
        );
        metric(
            "postern_relay_bytes_total",
            "counter",
            "Bytes spliced, by direction.",
            format!(
                "postern_relay_bytes_total{{direction=\"to_gateway\"}} {}\n\
                 postern_relay_bytes_total{{direction=\"to_platform\"}} {}",
                get(&self.bytes_to_gateway),
                get(&self.bytes_to_platform)
            ),
        );
        let refusals: Vec<String> = ALL
            .iter()
            .map(|r| {
                format!(
                    "postern_relay_refusals_total{{reason=\"{}\"}} {}",
                    r.as_str(),
                    self.refusals(*r)
                )
            })
            .collect();
        metric(
            "postern_relay_refusals_total",
            "counter",
            "Refused connections and requests, by reason.",
            refusals.join("\n"),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason_and_counts() {
        let m = Metrics::default();
        m.refuse(Refusal::NotConnected);
        m.refuse(Refusal::NotConnected);
        m.bytes_to_gateway.fetch_add(5, Ordering::Relaxed);
        let text = m.render(3, 2);
        assert!(text.contains("postern_relay_tunnels 3\n"));
        assert!(text.contains("postern_relay_refusals_total{reason=\"not_connected\"} 2\n"));
        assert!(text.contains("postern_relay_refusals_total{reason=\"ssh_auth\"} 0\n"));
        assert!(text.contains("postern_relay_bytes_total{direction=\"to_gateway\"} 5\n"));
        assert_eq!(m.refusals(Refusal::Revoked), 0);
    }
}
