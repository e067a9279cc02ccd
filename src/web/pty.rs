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
use tokio::io::AsyncWriteExt;

use super::WebContext;
use crate::identity::tickets::Purpose;
use crate::identity::Identity;
use crate::launcher::{self, SessionEnv, TermSize, TerminalModes};
use crate::ops::recording::Recorder;
use crate::ops::sessions::{NewSession, SessionGuard};
use crate::ops::{Actor, AttachmentKind, Event, Front, TicketOp};
use crate::sessions::supervise::{Rules, Started};
use crate::sessions::{Joining, Running};

/// Query of `/api/pty`. Only the ticket carries identity (and, when it was minted for one, the
/// session to attach); the size is cosmetic.
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
        op: TicketOp::Consume,
        purpose: Purpose::Pty,
        ok: consumed.is_ok(),
    });
    let (identity, session) = match consumed {
        Ok(r) => (r.identity, r.session),
        Err(reason) => {
            tracing::warn!(%reason, "refused: pty ticket");
            return (StatusCode::FORBIDDEN, "invalid ticket\n").into_response();
        }
    };
    let size = TermSize::clamped(q.cols.unwrap_or(80), q.rows.unwrap_or(24), 0, 0);
    if let Some(id) = session.as_deref() {
        // Checked again: the session may have ended since the ticket was minted.
        let Some(session) = ctx.hub.own(&identity.user_id, id) else {
            return (StatusCode::NOT_FOUND, "no such session of yours\n").into_response();
        };
        let remote = ctx.client_ip(peer, &headers);
        return ws
            .max_message_size(ctx.max_message_size)
            .max_frame_size(ctx.max_message_size)
            .on_upgrade(move |socket| attach_browser(ctx, session, size, socket, remote));
    }
    let launch = ctx.launch.load_full();
    let remote = ctx.client_ip(peer, &headers);
    let guard = match ctx
        .ops
        .sessions
        .register(
            NewSession::of(
                &identity,
                Front::Web,
                Some(remote),
                launch.command.display(),
            ),
            ctx.max_sessions_per_user,
        )
        .await
    {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!("refused: {e}");
            ctx.ops.emit(Event::Refused {
                user: Some(identity.user_id.clone()),
                remote: Some(remote),
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
    socket: WebSocket,
    guard: SessionGuard,
    launch: Arc<crate::launcher::LaunchSpec>,
) {
    let live = guard.session.clone();
    let remote = live.remote;
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
    let (mut sink, stream) = socket.split();
    let (launcher::Spawned { process, io }, pty) = match spawned {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the session program");
            if let launcher::LaunchError::Account(a) = &e {
                ctx.ops.emit(Event::Refused {
                    user: Some(identity.user_id.clone()),
                    remote: live.remote,
                    what: a.to_string(),
                });
            }
            let _ = sink
                .send(Message::Text(
                    format!("\r\nThe program could not be started: {e}\r\n").into(),
                ))
                .await;
            let _ = sink.close().await;
            return;
        }
    };
    tracing::info!(
        pid = process.pid(),
        session_id = live.id,
        "web session started"
    );
    ctx.ops.emit(live.started(
        Some((size.cols, size.rows)),
        &process.account().name,
        process.account().uid,
    ));
    let recorder = match &ctx.recording_dir {
        Some(dir) => Recorder::start(dir, live.user.as_str(), live.id, size.cols, size.rows, "xterm-256color")
            .await
            .map_err(|e| tracing::error!(error = %e, "cannot start the session recording; the session goes on"))
            .ok(),
        None => None,
    };
    let detachable = !ctx.detach.timeout.is_zero();
    let session = Running::new(
        identity.user_id.clone(),
        live.command.clone(),
        live.clone(),
        pty,
        size,
        detachable.then_some(ctx.detach.scrollback),
        ctx.ops.clone(),
    );
    // The browser is the first client, attached before any output is read.
    let (writer, forward) = browser_writer(sink);
    let joining = Joining {
        who: format!(
            "{} from {} (browser)",
            identity.user_id,
            live.remote.map(|r| r.to_string()).unwrap_or_default()
        ),
        size: Some(size),
        watcher: false,
        restore: false,
    };
    let attachment = session.attach(writer, joining).await;
    drop(io.input);
    let rules = Rules {
        ops: ctx.ops.clone(),
        shutdown: ctx.shutdown.clone(),
        idle: ctx.idle_timeout,
    };
    crate::sessions::take_over(
        &ctx.hub,
        &session,
        io.output,
        recorder,
        |out| Started {
            process,
            live,
            guard,
            out,
            err: None,
            started: std::time::Instant::now(),
        },
        rules,
        ctx.detach.timeout,
    );
    serve_browser(&ctx, session, attachment, (stream, remote), forward).await;
}

/// A browser attaches a running session: it gets the screen as it stands, then live output.
async fn attach_browser(
    ctx: Arc<WebContext>,
    session: Arc<Running>,
    size: TermSize,
    socket: WebSocket,
    remote: std::net::IpAddr,
) {
    let (sink, stream) = socket.split();
    let (writer, forward) = browser_writer(sink);
    let joining = Joining {
        who: format!("{} from {remote} (browser)", session.user),
        size: Some(size),
        watcher: false,
        restore: true,
    };
    let attachment = session.attach(writer, joining).await;
    tracing::info!(user = %session.user, session = session.id, "browser attached");
    audit_attachment(&ctx, &session, Some(remote), AttachmentKind::Attach);
    serve_browser(&ctx, session, attachment, (stream, Some(remote)), forward).await;
}

fn audit_attachment(
    ctx: &WebContext,
    session: &Running,
    remote: Option<std::net::IpAddr>,
    what: AttachmentKind,
) {
    ctx.ops.emit(Event::Attachment {
        owner: session.user.clone(),
        actor: Actor::User(session.user.clone()),
        session: session.id.clone(),
        remote,
        what,
    });
}

/// A client's output sink that sends binary frames to the browser, and the task that does
/// it (which hands the socket back when the session lets the client go).
fn browser_writer(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
) -> (
    crate::sessions::Sink,
    tokio::task::JoinHandle<futures_util::stream::SplitSink<WebSocket, Message>>,
) {
    // A few chunks in flight; a slow browser then pauses the program, as with SSH.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let forward = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if sink.send(Message::Binary(b)).await.is_err() {
                break;
            }
        }
        sink
    });
    let writer = tokio_util::io::SinkWriter::new(tokio_util::io::CopyToBytes::new(
        tokio_util::sync::PollSender::new(tx)
            .sink_map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
    ));
    (Box::new(writer), forward)
}

/// Keystrokes and resizes from the browser into the session, until the browser leaves (the
/// session is detached) or the session lets it go (it ended, or another client took it).
async fn serve_browser(
    ctx: &WebContext,
    session: Arc<Running>,
    attachment: crate::sessions::Attachment,
    (mut stream, remote): (
        futures_util::stream::SplitStream<WebSocket>,
        Option<std::net::IpAddr>,
    ),
    forward: tokio::task::JoinHandle<futures_util::stream::SplitSink<WebSocket, Message>>,
) {
    let mut input = session.input_for(&attachment);
    let browser = async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) => {
                    session.live.input(b.len());
                    if input.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Text(t) => {
                    if let Ok(c) = serde_json::from_str::<Control>(&t) {
                        if let (true, Some(cols), Some(rows)) = (c.kind == "resize", c.cols, c.rows)
                        {
                            session.resize_from(&attachment, TermSize::clamped(cols, rows, 0, 0));
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = browser => {
            session.detach(&attachment).await;
            if !ctx.detach.timeout.is_zero() {
                tracing::info!(session = session.id, "browser left; session detached");
                audit_attachment(ctx, &session, remote, AttachmentKind::Detach);
                ctx.hub.cap_detached(&session.user, ctx.detach.max_per_user);
            }
        }
        _ = attachment.gone.cancelled() => {
            let outcome = session.outcome().borrow().clone();
            // The session dropped this client's writer: the socket comes back for the end, once
            // the output queued for it is written (or the browser stalled past the grace).
            attachment.flushed().await;
            let forward = tokio::time::timeout(crate::sessions::FLUSH_GRACE, forward);
            if let Ok(Ok(mut sink)) = forward.await {
                let (notice, reason) = match &outcome {
                    Some(o) => (o.notice.clone(), o.code.map(|c| format!("exit {c}")).unwrap_or_default()),
                    None => (None, String::new()),
                };
                if let Some(text) = notice {
                    let line = format!("\r\n[hermes-ssh-gateway] {text}\r\n");
                    let _ = sink.send(Message::Binary(line.into_bytes().into())).await;
                }
                let _ = sink
                    .send(Message::Close(Some(CloseFrame { code: 1000, reason: reason.into() })))
                    .await;
            }
        }
    }
}
