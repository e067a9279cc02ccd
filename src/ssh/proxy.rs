//! HAProxy's PROXY protocol on the SSH listener (`[ssh] proxy_protocol`, `trusted_proxies`).
//!
//! Behind a TCP load balancer every connection comes from the balancer; the header it sends
//! first names the client, and that address is the connection's from then on (logs, audit,
//! bans, per-address limits, `whoami`). Only the proxies the operator lists may send one:
//!
//! - from a trusted proxy, the connection must start with a header of the configured version,
//!   read exactly (byte by byte for v1, length-prefixed for v2: no SSH byte is consumed), within
//!   [`HEADER_TIMEOUT`]; anything else closes it;
//! - from anyone else, a connection that starts with a header is refused (it would otherwise
//!   let a client choose its own address): [`Sniff`] watches the first bytes russh reads.
//!
//! v2's `LOCAL` command (a balancer's own health check) and v1's `UNKNOWN` keep the proxy's
//! address. Parsing is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::key_options::address_matches;

/// How long a trusted proxy has to send its header (HAProxy sends it with the first segment).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// v1 headers are at most 107 bytes (the spec's bound, CRLF included).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest v2 address and TLV block accepted (addresses are ≤ 216 bytes; TLVs from HAProxy
/// are small). A proxy is trusted, but not with memory.
const V2_MAX_BODY: usize = 4096;

/// Which header versions the listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// No PROXY protocol (the default).
    Off,
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either.
    Any,
}

/// Why a connection's PROXY header was refused; the text is what the log and audit say.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A trusted proxy's connection did not start with a header.
    #[error("a connection from a trusted proxy did not start with a PROXY header")]
    Missing,
    /// A header of the version not configured.
    #[error("a PROXY {0} header where [ssh] proxy_protocol does not take it")]
    WrongVersion(&'static str),
    /// Not a valid header.
    #[error("malformed PROXY header ({0})")]
    Malformed(String),
    /// The socket failed or closed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// No header within [`HEADER_TIMEOUT`].
    #[error("no PROXY header within {HEADER_TIMEOUT:?}")]
    Timeout,
}

/// The listener's PROXY settings.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    mode: ProxyMode,
    /// Addresses and CIDR blocks, as `from=` patterns.
    trusted: String,
}

impl ProxyPolicy {
    /// `trusted`: addresses and CIDR blocks of the proxies.
    pub fn new(mode: ProxyMode, trusted: &[String]) -> ProxyPolicy {
        ProxyPolicy {
            mode,
            trusted: trusted.join(","),
        }
    }

    /// No PROXY protocol.
    pub fn off() -> ProxyPolicy {
        ProxyPolicy::new(ProxyMode::Off, &[])
    }

    /// Whether PROXY headers are considered at all.
    pub fn enabled(&self) -> bool {
        self.mode != ProxyMode::Off
    }

    /// Whether `peer` is a proxy whose header names the client.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.enabled() && !self.trusted.is_empty() && address_matches(peer, &self.trusted)
    }

    /// Reads a trusted proxy's header off `stream`; the client's address (the proxy's own for
    /// `LOCAL` and `UNKNOWN`).
    pub async fn read_header(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        tokio::time::timeout(HEADER_TIMEOUT, self.read(stream, peer))
            .await
            .map_err(|_| ProxyError::Timeout)?
    }

    async fn read(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyError> {
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await?;
        match first[0] {
            b'P' if matches!(self.mode, ProxyMode::V1 | ProxyMode::Any) => {
                let mut line = vec![b'P'];
                while !line.ends_with(b"\r\n") {
                    if line.len() >= V1_MAX {
                        return Err(ProxyError::Malformed("v1 line too long".into()));
                    }
                    let mut b = [0u8; 1];
                    stream.read_exact(&mut b).await?;
                    line.push(b[0]);
                }
                let header = ppp::v1::Header::try_from(line.as_slice())
                    .map_err(|e| ProxyError::Malformed(e.to_string()))?;
                Ok(match header.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        SocketAddr::from((a.source_address, a.source_port))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        SocketAddr::from((a.source_address, a.source_port))
                    }
                    ppp::v1::Addresses::Unknown => peer,
                })
            }
            b'\r' if matches!(self.mode, ProxyMode::V2 | ProxyMode::Any) => {
                let mut head = [0u8; 16];
                head[0] = b'\r';
                stream.read_exact(&mut head[1..]).await?;
                if &head[..12] != V2_SIGNATURE {
                    return Err(ProxyError::Missing);
                }
                let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                if len > V2_MAX_BODY {
                    return Err(ProxyError::Malformed(format!("v2 body of {len} bytes")));
                }
                let mut all = head.to_vec();
                all.resize(16 + len, 0);
                stream.read_exact(&mut all[16..]).await?;
                let header = ppp::v2::Header::try_from(all.as_slice())
                    .map_err(|e| ProxyError::Malformed(e.to_string()))?;
                if header.command == ppp::v2::Command::Local {
                    return Ok(peer);
                }
                Ok(match header.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        SocketAddr::from((a.source_address, a.source_port))
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        SocketAddr::from((a.source_address, a.source_port))
                    }
                    ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => peer,
                })
            }
            b'P' => Err(ProxyError::WrongVersion("v1")),
            b'\r' => Err(ProxyError::WrongVersion("v2")),
            _ => Err(ProxyError::Missing),
        }
    }
}

/// Whether `start` (the first bytes of a connection) is the beginning of a PROXY header.
fn looks_like_header(start: &[u8]) -> bool {
    let v1 = b"PROXY ";
    let n = start.len().min(v1.len());
    let m = start.len().min(V2_SIGNATURE.len());
    n > 0 && (start[..n] == v1[..n] || start[..m] == V2_SIGNATURE[..m])
}

/// A stream from an untrusted peer that fails as soon as its first bytes turn out to be a
/// PROXY header (an SSH client's first bytes are `SSH-`), and says so through `caught`.
pub struct Sniff<S> {
    inner: S,
    /// Bytes seen so far, up to the longest signature.
    seen: Vec<u8>,
    done: bool,
    caught: Arc<AtomicBool>,
}

impl<S> Sniff<S> {
    /// Watches `inner` when `watch` (PROXY on, peer untrusted); else passes it through.
    pub fn new(inner: S, watch: bool, caught: Arc<AtomicBool>) -> Sniff<S> {
        Sniff {
            inner,
            seen: Vec::new(),
            done: !watch,
            caught,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if !me.done {
            if let Poll::Ready(Ok(())) = r {
                let new = &buf.filled()[before..];
                let want = V2_SIGNATURE.len() - me.seen.len();
                me.seen.extend_from_slice(&new[..new.len().min(want)]);
                if !looks_like_header(&me.seen) {
                    me.done = true;
                } else if me.seen.len() >= 6
                    && (me.seen.starts_with(b"PROXY ") || me.seen.len() == V2_SIGNATURE.len())
                {
                    me.caught.store(true, Ordering::Relaxed);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "PROXY header from an untrusted address",
                    )));
                }
            }
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Sniff<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_starts_are_recognised_and_ssh_is_not() {
        assert!(looks_like_header(b"PRO"));
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(b"\r\n\r\n\0\r"));
        assert!(!looks_like_header(b"SSH-2.0-OpenSSH"));
        assert!(!looks_like_header(b"PRIVMSG"));
        assert!(!looks_like_header(b""));
    }

    #[test]
    fn trusted_proxies_are_addresses_and_blocks() {
        let p = ProxyPolicy::new(ProxyMode::Any, &["127.0.0.1".into(), "10.0.0.0/8".into()]);
        assert!(p.trusts("127.0.0.1".parse().unwrap()));
        assert!(p.trusts("10.2.3.4".parse().unwrap()));
        assert!(!p.trusts("127.0.0.2".parse().unwrap()));
        assert!(!ProxyPolicy::off().trusts("127.0.0.1".parse().unwrap()));
    }
}
