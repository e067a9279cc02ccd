//! The optional web front: OIDC login in the browser, single-use WebSocket tickets, and a
//! browser terminal (xterm.js) on the same launcher and identity as SSH.
//!
//! Depends on the identity core and the launcher; knows nothing of the SSH front. Identity never
//! comes from anything the client sends: only from the server-side session or a consumed ticket.

mod auth;
pub mod forwarded;
mod listener;
mod pty;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::oidc::Oidc;
use crate::identity::tickets::TicketStore;
use crate::launcher::LaunchSpec;

pub use listener::WebLimits;
pub use sessions::SessionStore;

/// What the web front needs.
pub struct WebContext {
    /// The URL users open (scheme, host and port, no trailing slash); also the only accepted
    /// `Origin`.
    pub public_url: String,
    /// Browser login with the IdP (absent: only `ssh host link` logs browsers in).
    pub oidc: Option<Arc<Oidc>>,
    /// Tickets shared with the other fronts.
    pub tickets: Arc<dyn TicketStore>,
    /// Browser sessions.
    pub sessions: Arc<SessionStore>,
    /// Which ids identity-provider users may not hold.
    pub namespaces: Arc<crate::identity::namespace::Namespaces>,
    /// What to run (swapped whole on a config reload).
    pub launch: Arc<arc_swap::ArcSwap<LaunchSpec>>,
    /// Audit, metrics, live sessions.
    pub ops: Arc<crate::ops::Ops>,
    /// Graceful shutdown stages.
    pub shutdown: crate::ops::Shutdown,
    /// Most sessions per user (0: no limit).
    pub max_sessions_per_user: usize,
    /// How long a browser session lasts.
    pub session_ttl: Duration,
    /// Lifetime of a WebSocket ticket.
    pub ticket_ttl: Duration,
    /// Connection caps and timeouts.
    pub limits: WebLimits,
    /// Most browser logins in flight from one address (or IPv6 network).
    pub max_logins_per_address: usize,
    /// Largest WebSocket message (and frame) a browser may send.
    pub max_message_size: usize,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` / `X-Forwarded-Proto` count (addresses
    /// and CIDR blocks, comma-separated as in `from=` patterns); from anyone else those headers
    /// are ignored. Swapped on SIGHUP.
    pub trusted_proxies: Arc<arc_swap::ArcSwap<String>>,
    /// Failed logins and bans, shared with the SSH front.
    pub bans: Arc<dyn crate::identity::limits::Bans>,
    /// The node's sessions, shared with the SSH front.
    pub hub: Arc<crate::sessions::Hub>,
    /// How long a session waits for a client, and its scrollback.
    pub detach: crate::sessions::DetachPolicy,
    /// `[limits] idle_timeout`.
    pub idle_timeout: Duration,
    /// `[recording] dir`, when sessions are recorded.
    pub recording_dir: Option<std::path::PathBuf>,
}

impl WebContext {
    fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.public_url)
    }

    /// What the request says of its client through trusted proxies (see [`forwarded`]).
    fn origin(&self, peer: std::net::SocketAddr, headers: &HeaderMap) -> forwarded::Origin {
        let trusted = self.trusted_proxies.load();
        forwarded::origin(peer, headers, |ip| {
            !trusted.is_empty() && crate::identity::key_options::address_matches(ip, &trusted)
        })
    }

    /// The client's address: the socket's peer, or the one trusted proxies name.
    fn client_ip(&self, peer: std::net::SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
        self.origin(peer, headers).client
    }

    /// Whether a request's `Origin` is this gateway's own (CSRF and cross-site WebSocket guard).
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| o.trim_end_matches('/') == self.public_url)
    }
}

/// The routes.
pub fn router(ctx: Arc<WebContext>) -> Router {
    Router::new()
        .route("/", get(auth::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/assets/{file}", get(asset))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", post(auth::logout))
        .route(
            "/auth/ticket",
            get(auth::ticket_confirm).post(auth::ticket_login),
        )
        .route("/api/auth/me", get(auth::me))
        .route("/api/auth/ws-ticket", post(auth::ws_ticket))
        .route("/api/pty", get(pty::pty))
        .route("/api/sessions", get(auth::sessions))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            https_only,
        ))
        .with_state(ctx)
}

/// Behind a TLS-terminating proxy that also serves plain HTTP: a request a trusted proxy says
/// came over `http` while `public_url` is `https` is sent to the https URL, so no cookie or
/// ticket is ever used over plain HTTP.
async fn https_only(
    axum::extract::State(ctx): axum::extract::State<Arc<WebContext>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let plain = ctx.origin(peer, req.headers()).proto == Some(forwarded::Scheme::Http);
    if plain && ctx.secure_cookies() {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        tracing::info!(%peer, "plain http through a proxy: redirected to the https URL");
        return axum::response::Redirect::permanent(&format!("{}{path}", ctx.public_url))
            .into_response();
    }
    next.run(req).await
}

/// `GET /metrics`: the same Prometheus text as the metrics listener.
async fn metrics(axum::extract::State(ctx): axum::extract::State<Arc<WebContext>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.ops.metrics.encode(),
    )
        .into_response()
}

/// Serves on an already-bound listener until `shutdown` (stop accepting; open WebSockets end
/// with the sessions' own shutdown).
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<WebContext>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let sessions = ctx.sessions.clone();
    crate::periodic::every(Duration::from_secs(60), shutdown.clone(), move || {
        sessions.sweep()
    });
    let limits = ctx.limits.clone();
    listener::serve(listener, router(ctx), limits, shutdown).await;
    Ok(())
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const SIGNIN_HTML: &str = include_str!("assets/signin.html");

/// The embedded static files: pinned xterm.js (with its license) and our script.
async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, mime): (&'static [u8], &str) = match file.as_str() {
        "xterm.js" => (include_bytes!("assets/vendor/xterm.js"), "text/javascript"),
        "xterm.css" => (include_bytes!("assets/vendor/xterm.css"), "text/css"),
        "addon-fit.js" => (
            include_bytes!("assets/vendor/addon-fit.js"),
            "text/javascript",
        ),
        "LICENSE.xterm" => (include_bytes!("assets/vendor/LICENSE.xterm"), "text/plain"),
        "LICENSE.addon-fit" => (
            include_bytes!("assets/vendor/LICENSE.addon-fit"),
            "text/plain",
        ),
        "app.js" => (include_bytes!("assets/app.js"), "text/javascript"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Minimal HTML escaping for values put into the pages.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
