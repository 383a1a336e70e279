//! HTTP CONNECT egress proxy support for the SSH connection, for networks with no direct
//! egress. Optional basic authentication (the `user:password` comes from a file).

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An HTTP proxy.
#[derive(Clone)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub address: String,
    /// `user:password` for basic authentication. Never logged.
    pub credentials: Option<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("address", &self.address)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Connects to `address` (`host:port`) within `timeout`, with `TCP_NODELAY`.
pub fn dial(address: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{address} resolves to no address"))))
}

/// Standard base64 (for the proxy's basic authentication).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                out.push(char::from(T[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Proxy {
    /// A TCP stream to `target` through the proxy; fails with the proxy's status line if it
    /// refuses. Reads the reply byte by byte so nothing of the tunnelled stream is consumed.
    pub fn connect(&self, target: &str, timeout: Duration) -> std::io::Result<TcpStream> {
        let mut tcp = dial(&self.address, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(c) = &self.credentials {
            request.push_str(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64(c.trim().as_bytes())
            ));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                return Err(std::io::Error::other("proxy reply head over 8 KiB"));
            }
            if tcp.read(&mut byte)? == 0 {
                return Err(std::io::Error::other(
                    "proxy closed the connection during CONNECT",
                ));
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        let status = text.lines().next().unwrap_or("");
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if code != "200" {
            return Err(std::io::Error::other(format!(
                "proxy {} refused CONNECT {target}: {status}",
                self.address
            )));
        }
        tcp.set_read_timeout(None)?;
        tcp.set_write_timeout(None)?;
        Ok(tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }

    #[test]
    fn connect_sends_credentials_and_refuses_non_200() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in [
                "HTTP/1.1 200 Connection established\r\n\r\nXY",
                "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                s.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        let proxy = Proxy {
            address: addr,
            credentials: Some("user:pass".into()),
        };
        let mut ok = proxy.connect("relay:2222", Duration::from_secs(5)).unwrap();
        let mut rest = [0u8; 2];
        ok.read_exact(&mut rest).unwrap();
        assert_eq!(
            &rest, b"XY",
            "bytes after the reply head belong to the tunnel"
        );
        let err = proxy
            .connect("relay:2222", Duration::from_secs(5))
            .unwrap_err();
        assert!(err.to_string().contains("407"), "{err}");
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("CONNECT relay:2222 HTTP/1.1\r\n"));
        assert!(seen[0].contains("Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"));
        assert!(!format!("{proxy:?}").contains("pass"));
    }
}
