//! The web front's accept loop: axum's router on hyper, with the limits `axum::serve` lacks.
//!
//! Every front shares one descriptor table, so a web client that opens sockets and sends
//! nothing must not be able to use them up: connections are capped in total and per address
//! (IPv6 by network) and closed at accept beyond that, a request's headers must arrive within
//! `header_timeout` (which also bounds an idle keep-alive connection), and a request that is
//! not a WebSocket upgrade must be answered within `request_timeout`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use dashmap::DashMap;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::limits::address_group;

/// Caps on the web front's connections.
#[derive(Debug, Clone)]
pub struct WebLimits {
    /// Most open connections (WebSocket terminals included).
    pub max_connections: usize,
    /// Most open connections from one address (or IPv6 network).
    pub max_connections_per_address: usize,
    /// Time to receive a request's headers, and most time a keep-alive connection may idle.
    pub header_timeout: Duration,
    /// Time to answer a request that is not a WebSocket upgrade.
    pub request_timeout: Duration,
    /// IPv6 addresses sharing this many leading bits count as one address.
    pub ipv6_prefix: u8,
}

/// Open connections, in total and per address group.
#[derive(Default)]
struct Counts {
    by_group: DashMap<IpAddr, usize>,
    total: std::sync::atomic::AtomicUsize,
}

/// One open connection's place in [`Counts`]; freed on drop.
struct Place {
    counts: Arc<Counts>,
    group: IpAddr,
}

impl Counts {
    fn take(self: &Arc<Self>, group: IpAddr, limits: &WebLimits) -> Option<Place> {
        use std::sync::atomic::Ordering;
        let mut n = self.by_group.entry(group).or_insert(0);
        if *n >= limits.max_connections_per_address {
            return None;
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        Some(Place {
            counts: self.clone(),
            group,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.counts
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.counts.by_group.remove_if_mut(&self.group, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting and lets requests in
/// flight finish (WebSocket terminals end with their sessions' own shutdown).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: WebLimits,
    shutdown: CancellationToken,
) {
    let counts = Arc::new(Counts::default());
    let mut refusals = Refusals::default();
    let tracker = TaskTracker::new();
    let request_timeout = limits.request_timeout;
    let router = router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            answer_within(request_timeout, req, next)
        },
    ));
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let group = address_group(peer.ip(), limits.ipv6_prefix);
        let Some(place) = counts.take(group, &limits) else {
            refusals.refused(peer);
            continue;
        };
        let router = router.clone();
        let header_timeout = limits.header_timeout;
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let _place = place;
            serve_connection(socket, peer, router, header_timeout, stop).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Refused connections, logged at most every few seconds: a flood must not become a flood of
/// log lines too.
#[derive(Default)]
struct Refusals {
    since_last: u64,
    last: Option<std::time::Instant>,
}

impl Refusals {
    fn refused(&mut self, peer: SocketAddr) {
        self.since_last += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            %peer,
            refused = self.since_last,
            "web connections refused: too many open (in total or from one address)"
        );
        self.since_last = 0;
        self.last = Some(std::time::Instant::now());
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // Handlers learn the peer's address as with axum::serve's connect info.
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                use tower::ServiceExt as _;
                router.oneshot(req.map(axum::body::Body::new)).await
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "web connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Answers 408 when a handler takes longer than `limit`. A WebSocket upgrade answers at once
/// (its terminal runs after the response), so only slow requests are cut.
async fn answer_within(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request took too long\n",
        )
            .into_response(),
    }
}
