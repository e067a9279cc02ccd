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
    let identity = match ctx.tickets.consume(&token, Purpose::Pty).await {
        Ok(id) => id,
        Err(reason) => {
            tracing::warn!(%reason, "refused: pty ticket");
            return (StatusCode::FORBIDDEN, "invalid ticket\n").into_response();
        }
    };
    let size = TermSize::clamped(q.cols.unwrap_or(80), q.rows.unwrap_or(24), 0, 0);
    let span = tracing::info_span!("web-pty", user = %identity.user_id);
    ws.on_upgrade(move |socket| {
        tracing::Instrument::instrument(run(ctx, identity, size, socket), span)
    })
}

async fn run(ctx: Arc<WebContext>, identity: Identity, size: TermSize, mut socket: WebSocket) {
    let launch = ctx.launch.clone();
    let id = identity.clone();
    let env = SessionEnv {
        term: Some("xterm-256color".into()),
        client: Vec::new(),
    };
    let prepared = tokio::task::spawn_blocking(move || launch.prepare(&id, &env, &[]))
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
            let _ = socket
                .send(Message::Text(
                    format!("\r\nThe program could not be started: {e}\r\n").into(),
                ))
                .await;
            let _ = socket.close().await;
            return;
        }
    };
    tracing::info!(pid = process.pid(), "web session started");
    let Some(io) = process.take_io() else {
        return;
    };
    let resizer = process.resizer();
    let (mut sink, mut stream) = socket.split();
    let mut output = io.output;
    let mut input = io.input;

    // Program → browser. `sink.send` waits for the socket, so a slow browser pauses the program.
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
                }
            }
        }
        sink
    });
    let browser = async {
        while let Some(Ok(msg)) = stream.next().await {
            let keep = match msg {
                Message::Binary(b) => input.write_all(&b).await.is_ok(),
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
    let status = tokio::select! {
        s = process.exited() => Some(s),
        _ = browser => None,
    };
    match status {
        None => {
            tracing::info!("browser closed the session; ending the program");
            out.abort();
            // Dropping the process hangs up its whole group, as for SSH.
            drop(process);
        }
        Some(st) => {
            tracing::info!(code = st.exit_code(), "program exited");
            let group = process.group();
            drop(process);
            tokio::spawn(async move { group.terminate().await });
            if let Ok(Ok(mut sink)) =
                tokio::time::timeout(std::time::Duration::from_millis(300), out).await
            {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: format!("exit {}", st.exit_code()).into(),
                    })))
                    .await;
            }
        }
    }
}
