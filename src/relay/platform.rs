//! The relay's TLS side: platforms connect with a relay client certificate naming the
//! (org, gateway) to reach; the relay answers with one status frame, then splices.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::metrics::Refusal;
use super::Shared;
use crate::frame::{Frame, Status};
use crate::tls::TlsError;

/// Splice buffer per direction.
const SPLICE_BUFFER: usize = 64 * 1024;
/// Socket read buffer under the TLS layer: rustls asks for at most 4 KiB per read, which would
/// cost four system calls per full-size record.
const SOCKET_READ_BUFFER: usize = 32 * 1024;

pub(super) async fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
        shared.metrics.refuse(Refusal::Busy);
        log::warn!("refused TLS connection from {peer}: too many handshakes in progress");
        return;
    };
    let _ = tcp.set_nodelay(true);
    let live = shared.live();
    let acceptor = TlsAcceptor::from(live.tls.config());
    let timeout = shared.limits.handshake_timeout;
    let tcp = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp);
    let mut tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.refuse(Refusal::TlsHandshake);
            let why = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(TlsError::from_rustls)
                .map_or_else(|| e.to_string(), ToString::to_string);
            log::warn!("refused platform connection from {peer}: {why}");
            return;
        }
        Err(_) => {
            shared.metrics.refuse(Refusal::TlsHandshake);
            log::warn!("platform {peer} did not finish the TLS handshake within {timeout:?}");
            return;
        }
    };
    drop(permit);
    let route = match live.tls.route(tls.get_ref().1, SystemTime::now()) {
        Ok(route) => route,
        Err(e) => {
            shared.metrics.refuse(Refusal::TlsHandshake);
            log::warn!("refused platform connection from {peer}: {e}");
            return;
        }
    };
    let (org, gateway) = (route.org().clone(), route.gateway().clone());
    let refuse = |status: Status, why: Refusal, message: String| {
        shared.metrics.refuse(why);
        log::warn!("platform {peer} for gateway {gateway} of org {org}: {message}");
        Frame::new(status, message)
    };
    let key = (org.clone(), gateway.clone());
    let relay = &shared.name;
    let refusal = if shared.stopping() {
        refuse(
            Status::Stopping,
            Refusal::Busy,
            format!("relay {relay} is stopping"),
        )
    } else if shared.registry.is_revoked(&key) {
        refuse(
            Status::Revoked,
            Refusal::Revoked,
            format!("gateway {gateway} of org {org} is revoked"),
        )
    } else {
        let Some(slot) = shared.slots.take(&org) else {
            let f = refuse(
                Status::Busy,
                Refusal::Busy,
                format!("org {org} is at its connection limit on relay {relay}"),
            );
            return send_refusal(&mut tls, f).await;
        };
        match open_channel(&shared, &key, peer).await {
            Ok(channel) => {
                let hello = Frame::new(
                    Status::Connected,
                    format!("relay {relay} connected to gateway {gateway} of org {org}"),
                );
                if tls.write_all(&hello.encode()).await.is_err() {
                    return;
                }
                splice(&shared, tls, channel.into_stream(), peer).await;
                drop(slot);
                return;
            }
            Err(status) => {
                let (why, message) = match status {
                    Status::NotConnected => (
                        Refusal::NotConnected,
                        format!("gateway {gateway} of org {org} is not connected to relay {relay}"),
                    ),
                    _ => (
                        Refusal::GatewayUnreachable,
                        format!(
                            "gateway {gateway} of org {org} has a tunnel to relay {relay} but did \
                             not accept a connection"
                        ),
                    ),
                };
                refuse(status, why, message)
            }
        }
    };
    send_refusal(&mut tls, refusal).await;
}

async fn send_refusal<S: AsyncWrite + Unpin>(tls: &mut S, frame: Frame) {
    let _ = tls.write_all(&frame.encode()).await;
    let _ = tls.shutdown().await;
}

/// Opens a channel on the newest tunnel that accepts one.
async fn open_channel(
    shared: &Shared,
    key: &super::registry::TunnelKey,
    peer: SocketAddr,
) -> Result<russh::Channel<russh::server::Msg>, Status> {
    let candidates = shared.registry.candidates(key);
    if candidates.is_empty() {
        return Err(Status::NotConnected);
    }
    for tunnel in candidates {
        let open = tunnel.handle.channel_open_forwarded_tcpip(
            tunnel.bind_address.clone(),
            tunnel.bind_port,
            peer.ip().to_string(),
            u32::from(peer.port()),
        );
        match tokio::time::timeout(shared.limits.channel_timeout, open).await {
            Ok(Ok(channel)) => return Ok(channel),
            Ok(Err(e)) => log::warn!("tunnel {} refused a channel: {e}", tunnel.id),
            Err(_) => log::warn!("tunnel {} did not answer a channel open in time", tunnel.id),
        }
    }
    Err(Status::GatewayUnreachable)
}

async fn splice<A, B>(shared: &Shared, platform: A, gateway: B, peer: SocketAddr)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let m = &shared.metrics;
    m.splices_active.fetch_add(1, Ordering::Relaxed);
    m.splices_total.fetch_add(1, Ordering::Relaxed);
    let mut platform = Counted::new(platform, &m.bytes_to_gateway);
    let mut gateway = Counted::new(gateway, &m.bytes_to_platform);
    let result = tokio::io::copy_bidirectional_with_sizes(
        &mut platform,
        &mut gateway,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    )
    .await;
    m.splices_active.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        log::info!("splice for {peer} ended with an error: {e}");
    }
}

/// A stream that adds every byte read from it to a counter, so the byte metrics stay right
/// even when a splice ends with an error.
struct Counted<'a, S> {
    inner: S,
    read: &'a AtomicU64,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, read: &'a AtomicU64) -> Self {
        Self { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read
            .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
