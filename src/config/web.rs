//! `[web]`: the browser front.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// `[web]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL users open, e.g. `https://hermes.example.com` (the OIDC redirect URI is
    /// `<public_url>/auth/callback`; the only accepted `Origin`).
    pub public_url: PublicUrl,
    /// How long a browser session lasts.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Lifetime of a WebSocket ticket (`POST /api/auth/ws-ticket`).
    #[serde(default = "default_ticket_ttl", with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// Most open web connections (browser terminals included); more are closed at accept.
    #[serde(default = "default_web_max_connections")]
    pub max_connections: usize,
    /// Most open web connections from one address (IPv6: one `[limits] ipv6_prefix` network).
    #[serde(default = "default_web_max_per_address")]
    pub max_connections_per_address: usize,
    /// Time for a request's headers to arrive; also how long a keep-alive connection may idle.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time to answer any request other than a terminal's WebSocket.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most browser logins in flight (sent to the IdP, not back yet) from one address.
    #[serde(default = "default_logins_per_address")]
    pub max_logins_per_address: usize,
    /// Largest WebSocket message a browser may send (keystrokes, pastes, resizes).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: bytesize::ByteSize,
    /// Reverse proxies (addresses, CIDR blocks) whose `Forwarded` / `X-Forwarded-For` /
    /// `X-Forwarded-Proto` count.
    #[serde(default)]
    pub trusted_proxies: Vec<super::AddressPattern>,
}

fn default_web_max_connections() -> usize {
    512
}

fn default_web_max_per_address() -> usize {
    64
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_logins_per_address() -> usize {
    16
}

fn default_max_message_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(1)
}

fn default_ticket_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// `scheme://host[:port]`, no path, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicUrl(pub String);

impl TryFrom<String> for PublicUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{s:?}: public_url must be http or https"));
        }
        if u.path() != "/" || u.query().is_some() {
            return Err(format!(
                "{s:?}: public_url is scheme://host[:port] only (serving under a path is not supported)"
            ));
        }
        Ok(PublicUrl(u.origin().ascii_serialization()))
    }
}
