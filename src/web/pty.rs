//! `GET /api/pty?ticket=…`: a WebSocket terminal. The ticket is consumed (and the `Origin`
//! checked) before the upgrade, so a refusal is a plain HTTP 403. Binary frames carry terminal
//! bytes both ways; a text frame `{"type":"resize","cols":N,"rows":M}` resizes.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::WebContext;
use crate::identity::tickets::Purpose;
use crate::identity::Identity;
use crate::launcher::{self, SessionEnv, TermSize, TerminalModes};
use crate::ops::sessions::{NewSession, SessionGuard};
use crate::ops::Event;

/// Query of `/api/pty`. Only the ticket carries identity; the size is cosmetic.
#[derive(Deserialize)]
pub struct PtyQuery {
    ticket: Option<String>,
    cols: Option<u32>,
    rows: Option<u32>,
}

#[derive(Deserialize)]
struct Control {
    #[serde(rename = "type")]
    kind: String,
    cols: Option<u32>,
    rows: Option<u32>,
}

/// The WebSocket endpoint.
pub async fn pty(
    State(ctx): State<Arc<WebContext>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<PtyQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    // A WebSocket is not bound by the same-origin policy: without this check any page the user
    // visits could open a terminal with a ticket it obtained.
    if !ctx.same_origin(&headers) {
        tracing::warn!(origin = ?headers.get("origin"), "refused: WebSocket from a foreign origin");
        return (StatusCode::FORBIDDEN, "forbidden origin\n").into_response();
    }
    let token = q.ticket.unwrap_or_default();
    let consumed = ctx.tickets.consume(&token, Purpose::Pty).await;
    ctx.ops.emit(Event::Ticket {
        op: "consume",
        purpose: Purpose::Pty.as_str(),
        ok: consumed.is_ok(),
    });
    let identity = match consumed {
        Ok(id) => id,
        Err(reason) => {
            tracing::warn!(%reason, "refused: pty ticket");
            return (StatusCode::FORBIDDEN, "invalid ticket\n").into_response();
        }
    };
    let size = TermSize::clamped(q.cols.unwrap_or(80), q.rows.unwrap_or(24), 0, 0);
    let launch = ctx.launch.load_full();
    let remote = ctx.client_ip(peer, &headers).to_string();
    let guard = match ctx
        .ops
        .sessions
        .register(
            NewSession {
                user: identity.user_id.to_string(),
                method: identity.method.as_str().into(),
                front: "web",
                remote,
                command: launch.command.join(" "),
            },
            ctx.max_sessions_per_user,
        )
        .await
    {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!("refused: {e}");
            ctx.ops.emit(Event::Refused {
                user: Some(identity.user_id.to_string()),
                remote: String::new(),
                what: e.to_string(),
            });
            return (StatusCode::TOO_MANY_REQUESTS, format!("{e}\n")).into_response();
        }
    };
    let span = tracing::info_span!("web-pty", user = %identity.user_id);
    // A browser types and pastes: nothing it sends needs more than this, and tungstenite would
    // otherwise buffer up to 64 MB per message.
    ws.max_message_size(ctx.max_message_size)
        .max_frame_size(ctx.max_message_size)
        .on_upgrade(move |socket| {
            tracing::Instrument::instrument(run(ctx, identity, size, socket, guard, launch), span)
        })
}

async fn run(
    ctx: Arc<WebContext>,
    identity: Identity,
    size: TermSize,
    mut socket: WebSocket,
    guard: SessionGuard,
    launch: Arc<crate::launcher::LaunchSpec>,
) {
    let live = guard.session.clone();
    let id = identity.clone();
    let env = SessionEnv {
        term: Some("xterm-256color".into()),
        client: Vec::new(),
    };
    let spec = launch.clone();
    let prepared = tokio::task::spawn_blocking(move || spec.prepare(&id, &env, &[]))
        .await
        .unwrap_or_else(|e| Err(launcher::LaunchError::Other(e.to_string())));
    let spawned = match prepared {
        Ok(p) => launcher::spawn_pty(p, size, TerminalModes::default()).await,
        Err(e) => Err(e),
    };
    let mut process = match spawned {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the session program");
            if let launcher::LaunchError::Account(a) = &e {
                ctx.ops.emit(Event::Refused {
                    user: Some(identity.user_id.to_string()),
                    remote: live.remote.clone(),
                    what: a.to_string(),
                });
            }
            let _ = socket
                .send(Message::Text(
                    format!("\r\nThe program could not be started: {e}\r\n").into(),
                ))
                .await;
            let _ = socket.close().await;
            return;
        }
    };
    tracing::info!(
        pid = process.pid(),
        session_id = live.id,
        "web session started"
    );
    let started = std::time::Instant::now();
    ctx.ops.emit(live.started(
        Some((size.cols, size.rows)),
        &process.account().name,
        process.account().uid,
    ));
    let Some(io) = process.take_io() else {
        return;
    };
    let resizer = process.resizer();
    let (mut sink, mut stream) = socket.split();
    let mut output = io.output;
    let mut input = io.input;

    // Program → browser. `sink.send` waits for the socket, so a slow browser pauses the program.
    let live_out = live.clone();
    let out = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match output.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    live_out.output(n);
                }
            }
        }
        sink
    });
    let browser = async {
        while let Some(Ok(msg)) = stream.next().await {
            let keep = match msg {
                Message::Binary(b) => {
                    live.input(b.len());
                    input.write_all(&b).await.is_ok()
                }
                Message::Text(t) => {
                    if let Ok(c) = serde_json::from_str::<Control>(&t) {
                        if let (true, Some(r), Some(cols), Some(rows)) =
                            (c.kind == "resize", &resizer, c.cols, c.rows)
                        {
                            let _ = r.resize(TermSize::clamped(cols, rows, 0, 0));
                        }
                    }
                    true
                }
                Message::Close(_) => false,
                _ => true,
            };
            if !keep {
                break;
            }
        }
    };
    let limit_hit = process.limit_hit();
    let (status, mut limit) = tokio::select! {
        s = process.exited() => (Some(s), None),
        hit = limit_hit => (None, Some(hit)),
        _ = browser => (None, None),
        _ = live.end.cancelled() => (None, None),
        _ = ctx.shutdown.terminate.cancelled() => (None, None),
    };
    let group = process.group();
    let exit_status = status.map(|s| s.exit_code());
    if let Some(st) = status {
        tracing::info!(code = st.exit_code(), "program exited");
        limit = process.confinement().explain(st.signal);
    }
    let notice = limit.map(|hit| {
        tracing::warn!(
            limit = hit.as_str(),
            "web session stopped at a resource limit"
        );
        process.confinement().describe(hit)
    });
    if status.is_none() && limit.is_none() {
        tracing::info!("web session ending; ending the program");
        out.abort();
        // The whole group, as for SSH.
        group.terminate().await;
        drop(process);
    } else {
        group.terminate().await;
        drop(process);
        if let Ok(Ok(mut sink)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), out).await
        {
            if let Some(text) = &notice {
                let line = format!("\r\n[hermes-ssh-gateway] {text}\r\n");
                let _ = sink.send(Message::Binary(line.into_bytes().into())).await;
            }
            let reason = match (status, limit) {
                (_, Some(hit)) => format!("limit {}", hit.as_str()),
                (Some(st), None) => format!("exit {}", st.exit_code()),
                (None, None) => String::new(),
            };
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: reason.into(),
                })))
                .await;
        }
    }
    ctx.ops
        .emit(live.end_event(started, exit_status, limit.map(|l| l.as_str())));
    drop(guard);
}
