//! Prometheus metrics (text exposition format), derived from events.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Event;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TicketLabels {
    op: &'static str,
    purpose: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    connections: Counter,
    connections_active: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    auth: Family<AuthLabels, Counter>,
    sessions: Counter,
    sessions_active: Gauge,
    sessions_detached: Gauge,
    watchers: Gauge,
    device_flows: Gauge,
    bytes: Family<DirLabels, Counter>,
    tickets: Family<TicketLabels, Counter>,
    refused: Counter,
    session_seconds: Histogram,
    cluster_sessions: Gauge,
    limit_stops: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hermes_gateway");
        let m = Metrics {
            connections: Counter::default(),
            connections_active: Gauge::default(),
            connections_refused: Family::default(),
            auth: Family::default(),
            sessions: Counter::default(),
            sessions_active: Gauge::default(),
            sessions_detached: Gauge::default(),
            watchers: Gauge::default(),
            device_flows: Gauge::default(),
            bytes: Family::default(),
            tickets: Family::default(),
            refused: Counter::default(),
            session_seconds: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            cluster_sessions: Gauge::default(),
            limit_stops: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "SSH connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_active",
            "SSH connections open now",
            m.connections_active.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused before the handshake (limit, ban)",
            m.connections_refused.clone(),
        );
        registry.register(
            "auth_attempts",
            "Authentication attempts by method and result",
            m.auth.clone(),
        );
        registry.register("sessions", "Sessions started", m.sessions.clone());
        registry.register(
            "sessions_active",
            "Sessions running now",
            m.sessions_active.clone(),
        );
        registry.register(
            "sessions_detached",
            "Sessions running with no client attached (waiting for their user)",
            m.sessions_detached.clone(),
        );
        registry.register(
            "watchers",
            "Read-only watchers attached now",
            m.watchers.clone(),
        );
        registry.register(
            "device_flows_active",
            "Device sign-ins in progress",
            m.device_flows.clone(),
        );
        registry.register(
            "session_bytes",
            "Bytes through sessions by direction",
            m.bytes.clone(),
        );
        registry.register(
            "tickets",
            "Ticket mints and consumes by result",
            m.tickets.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused (forwarding, env, exec, limits)",
            m.refused.clone(),
        );
        registry.register(
            "session_duration_seconds",
            "Session durations",
            m.session_seconds.clone(),
        );
        registry.register(
            "session_limit_stops",
            "Sessions stopped at a [session.limits] cap, by limit",
            m.limit_stops.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Updates the metrics for an event.
    pub fn observe(&self, e: &Event) {
        match e {
            Event::Connection { opened: true } => {
                self.connections.inc();
                self.connections_active.inc();
            }
            Event::Connection { opened: false } => {
                self.connections_active.dec();
            }
            Event::ConnectionRefused { reason, .. } => {
                self.connections_refused
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
            Event::Auth {
                method, failure, ..
            } => {
                let labels = AuthLabels {
                    method: method.as_str(),
                    result: if failure.is_none() {
                        "success"
                    } else {
                        "failure"
                    },
                };
                self.auth.get_or_create(&labels).inc();
            }
            Event::SessionStart { .. } => {
                self.sessions.inc();
                self.sessions_active.inc();
            }
            Event::SessionEnd {
                duration,
                bytes_in,
                bytes_out,
                limit,
                ..
            } => {
                self.sessions_active.dec();
                if let Some(l) = limit {
                    self.limit_stops
                        .get_or_create(&ReasonLabels { reason: l.as_str() })
                        .inc();
                }
                self.session_seconds.observe(duration.as_secs_f64());
                self.bytes
                    .get_or_create(&DirLabels { direction: "in" })
                    .inc_by(*bytes_in);
                self.bytes
                    .get_or_create(&DirLabels { direction: "out" })
                    .inc_by(*bytes_out);
            }
            Event::Refused { .. } => {
                self.refused.inc();
            }
            // A refused admin use is a refusal like any other; an allowed one is not counted.
            Event::Admin { refused, .. } => {
                if refused.is_some() {
                    self.refused.inc();
                }
            }
            Event::Ticket { op, purpose, ok } => {
                let labels = TicketLabels {
                    op: match op {
                        super::TicketOp::Mint => "mint",
                        super::TicketOp::Consume => "consume",
                    },
                    purpose: purpose.as_str(),
                    result: if *ok { "ok" } else { "refused" },
                };
                self.tickets.get_or_create(&labels).inc();
            }
            Event::DeviceFlow { started } => {
                if *started {
                    self.device_flows.inc();
                } else {
                    self.device_flows.dec();
                }
            }
            Event::Detached { detached } => {
                if *detached {
                    self.sessions_detached.inc();
                } else {
                    self.sessions_detached.dec();
                }
            }
            Event::Watchers { delta } => {
                self.watchers.inc_by(*delta);
            }
            Event::Enrolled { .. }
            | Event::Logout { .. }
            | Event::Revoked { .. }
            | Event::Attachment { .. } => {}
        }
    }

    /// Sets the number of sessions on all nodes.
    pub fn set_cluster_sessions(&self, n: usize) {
        self.cluster_sessions.set(n as i64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on its own listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: std::sync::Arc<super::Ops>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let ops = ops.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    ops.metrics.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
