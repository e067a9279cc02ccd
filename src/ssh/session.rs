//! Session channels: PTY and env requests, shell and exec, and the pump between a channel and a
//! launched program.
//!
//! Everything here is called by the thin russh handler with plain values; the handler only turns
//! the boolean answers into `channel_success` / `channel_failure`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use super::SshContext;
use crate::config::ExecPolicy;
use crate::identity::Identity;
use crate::launcher::{self, process::Resizer, LaunchError, SessionEnv, TermSize, TerminalModes};

/// Input chunks queued between the channel and the program before the client is slowed down.
const INPUT_QUEUE: usize = 64;
/// Bytes read from the program per write to the channel.
const OUTPUT_CHUNK: usize = 32 * 1024;
/// After the program exits, how long its remaining output may take to arrive.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);
/// Most client variables accepted per channel.
const MAX_CLIENT_ENV: usize = 64;

/// The client's PTY request.
#[derive(Debug, Clone)]
pub struct PtyParams {
    /// `TERM`.
    pub term: String,
    /// Initial size.
    pub size: TermSize,
    /// Terminal modes.
    pub modes: TerminalModes,
}

/// The current size and, once the program runs, the handle to resize its PTY.
#[derive(Default)]
struct ResizeSlot {
    size: Option<TermSize>,
    resizer: Option<Resizer>,
}

type SharedResize = Arc<Mutex<ResizeSlot>>;

struct Slot {
    writer: Option<ChannelWriteHalf<Msg>>,
    input: Option<mpsc::Receiver<Bytes>>,
    /// Cancelled when the client closes the channel or the connection goes away.
    closed: CancellationToken,
    pty: Option<PtyParams>,
    env: Vec<(String, String)>,
    resize: SharedResize,
}

/// What the client asked a channel to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `shell`: the configured program.
    Shell,
    /// `exec`: a built-in, or the program with extra words (per `[session] exec`).
    Exec(String),
}

/// The session channels of one connection.
pub struct Channels {
    ctx: Arc<SshContext>,
    slots: HashMap<ChannelId, Slot>,
    span: Span,
}

impl Channels {
    /// No channels yet; `span` is the connection's.
    pub fn new(ctx: Arc<SshContext>, span: Span) -> Channels {
        Channels {
            ctx,
            slots: HashMap::new(),
            span,
        }
    }

    /// A session channel was accepted: start draining it so the connection never stalls on it.
    pub fn open(&mut self, channel: Channel<Msg>) {
        let id = channel.id();
        let (mut read, write) = channel.split();
        let (tx, rx) = mpsc::channel::<Bytes>(INPUT_QUEUE);
        let closed = CancellationToken::new();
        let closed2 = closed.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        if let Some(t) = &tx {
                            // Waiting here is the backpressure: a program that does not read
                            // slows the client down instead of growing a buffer.
                            tokio::select! {
                                r = t.send(data) => if r.is_err() { tx = None },
                                _ = closed2.cancelled() => break,
                            }
                        }
                    }
                    // Client EOF: the program's stdin closes (pipes) once queued input is read.
                    ChannelMsg::Eof => tx = None,
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            closed2.cancel();
        });
        self.slots.insert(
            id,
            Slot {
                writer: Some(write),
                input: Some(rx),
                closed,
                pty: None,
                env: Vec::new(),
                resize: SharedResize::default(),
            },
        );
    }

    /// The client closed the channel.
    pub fn close(&mut self, id: ChannelId) {
        if let Some(slot) = self.slots.remove(&id) {
            slot.closed.cancel();
        }
    }

    /// `pty-req`: remembered for the program that starts later. Refused once it runs.
    pub fn pty_request(&mut self, id: ChannelId, pty: PtyParams) -> bool {
        match self.slots.get_mut(&id) {
            Some(slot) if slot.writer.is_some() => {
                if let Ok(mut r) = slot.resize.lock() {
                    r.size = Some(pty.size);
                }
                slot.pty = Some(pty);
                true
            }
            _ => false,
        }
    }

    /// `window-change`: resizes the running program's PTY (or the one it will get).
    pub fn window_change(&mut self, id: ChannelId, size: TermSize) -> bool {
        let Some(slot) = self.slots.get(&id) else {
            return false;
        };
        let Ok(mut r) = slot.resize.lock() else {
            return false;
        };
        r.size = Some(size);
        match &r.resizer {
            Some(resizer) => resizer.resize(size).is_ok(),
            None => true,
        }
    }

    /// `env`: accepted only for names in `[session] accept_env`, and never for identity or
    /// gateway-set variables (refusals of those are logged: someone tried to pass as another).
    pub fn env_request(&mut self, id: ChannelId, name: &str, value: &str, user: &str) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        let launch = &self.ctx.launch;
        if launch.is_reserved(name) {
            tracing::warn!(parent: &self.span, user, variable = name, "refused client env: reserved variable (identity or gateway-set)");
            return false;
        }
        let accepted = self.ctx.accept_env.iter().any(|p| p.matches(name));
        if !accepted || value.contains('\0') || slot.env.len() >= MAX_CLIENT_ENV {
            tracing::debug!(parent: &self.span, user, variable = name, "refused client env: not in accept_env");
            return false;
        }
        slot.env.retain(|(k, _)| k != name);
        slot.env.push((name.to_owned(), value.to_owned()));
        true
    }

    /// `shell` or `exec`: starts the work for this channel. Returns false when the channel
    /// cannot start anything (unknown, or already started).
    pub fn start(&mut self, id: ChannelId, identity: &Identity, request: Request) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        let (Some(writer), Some(input)) = (slot.writer.take(), slot.input.take()) else {
            return false;
        };
        let work = match request {
            Request::Shell => Work::Program(Vec::new()),
            Request::Exec(cmd) => classify_exec(&cmd, self.ctx.exec_policy),
        };
        let job = Job {
            ctx: self.ctx.clone(),
            identity: identity.clone(),
            writer,
            input,
            closed: slot.closed.clone(),
            pty: slot.pty.clone(),
            env: std::mem::take(&mut slot.env),
            resize: slot.resize.clone(),
        };
        tokio::spawn(job.run(work).instrument(self.span.clone()));
        true
    }
}

/// What an `exec` request turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Print the identity as JSON.
    Whoami,
    /// Run the configured program with these extra arguments.
    Program(Vec<String>),
    /// Refuse with this message.
    Refuse(String),
}

/// Decides what `ssh host <command>` does.
pub fn classify_exec(command: &str, policy: ExecPolicy) -> Work {
    let words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    match words.first().map(String::as_str) {
        Some("whoami") if words.len() == 1 => Work::Whoami,
        None => Work::Program(Vec::new()),
        Some(_) => match policy {
            ExecPolicy::Args => Work::Program(words),
            ExecPolicy::Refuse => Work::Refuse(format!(
                "hermes-ssh-gateway: command {:?} is not available here; built-ins: whoami (or connect without a command)",
                command.trim()
            )),
        },
    }
}

/// Everything one channel's work needs, moved into its task.
struct Job {
    ctx: Arc<SshContext>,
    identity: Identity,
    writer: ChannelWriteHalf<Msg>,
    input: mpsc::Receiver<Bytes>,
    closed: CancellationToken,
    pty: Option<PtyParams>,
    env: Vec<(String, String)>,
    resize: SharedResize,
}

impl Job {
    async fn run(self, work: Work) {
        let code = match &work {
            Work::Whoami => {
                let line = format!("{}\n", self.identity.to_json_line());
                let _ = self.writer.data_bytes(Bytes::from(line)).await;
                0
            }
            Work::Refuse(msg) => {
                tracing::info!(user = %self.identity.user_id, "refused exec: {msg}");
                let _ = self
                    .writer
                    .extended_data_bytes(1, Bytes::from(format!("{msg}\r\n")))
                    .await;
                1
            }
            Work::Program(args) => {
                let args = args.clone();
                return self.run_program(args).await;
            }
        };
        finish(&self.writer, code).await;
    }

    async fn run_program(mut self, extra_args: Vec<String>) {
        let user = self.identity.user_id.to_string();
        let session_env = SessionEnv {
            term: self.pty.as_ref().map(|p| p.term.clone()),
            client: std::mem::take(&mut self.env),
        };
        let launch = self.ctx.launch.clone();
        let identity = self.identity.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            launch.prepare(&identity, &session_env, &extra_args)
        })
        .await
        .unwrap_or_else(|e| Err(LaunchError::Other(e.to_string())));
        let spawned = match prepared {
            Ok(p) => match &self.pty {
                Some(pty) => {
                    let size = current_size(&self.resize).unwrap_or(pty.size);
                    launcher::spawn_pty(p, size, pty.modes.clone()).await
                }
                None => launcher::spawn_pipes(p),
            },
            Err(e) => Err(e),
        };
        let mut process = match spawned {
            Ok(p) => p,
            Err(e) => return self.show_failure(&e).await,
        };
        tracing::info!(
            user,
            pid = process.pid(),
            pty = self.pty.is_some(),
            "program started"
        );

        if let Some(resizer) = process.resizer() {
            if let Ok(mut slot) = self.resize.lock() {
                // A window-change may have arrived while the program was starting.
                if let Some(size) = slot.size {
                    let _ = resizer.resize(size);
                }
                slot.resizer = Some(resizer);
            }
        }

        let Some(io) = process.take_io() else {
            return finish(&self.writer, 255).await;
        };
        let out = tokio::spawn(pump_out(io.output, self.writer.make_writer()));
        let err = io
            .stderr
            .map(|e| tokio::spawn(pump_out(e, self.writer.make_writer_ext(Some(1)))));
        let pump_in = tokio::spawn(pump_in(self.input, io.input));

        let status = tokio::select! {
            s = process.exited() => Some(s),
            _ = self.closed.cancelled() => None,
        };
        pump_in.abort();
        let Some(status) = status else {
            tracing::info!(user, "client closed the session; ending the program");
            // Dropping the process hangs up its whole group (SIGHUP, then SIGKILL).
            drop(process);
            out.abort();
            return;
        };
        // The program is gone; give its last output a moment to flush, then hang up anything it
        // left behind so nothing outlives the session.
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, out).await;
        if let Some(err) = err {
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, err).await;
        }
        let group = process.group();
        drop(process);
        tokio::spawn(async move { group.terminate().await });
        tracing::info!(
            user,
            code = status.exit_code(),
            signal = status.signal_name(),
            "program exited"
        );
        finish(&self.writer, status.exit_code()).await;
    }

    /// The program could not start: tell the user clearly instead of disconnecting.
    async fn show_failure(mut self, error: &LaunchError) {
        tracing::error!(user = %self.identity.user_id, error = %error, "cannot start the session program");
        let code = match error {
            LaunchError::NotFound { .. } => 127,
            LaunchError::NotExecutable { .. } => 126,
            _ => 1,
        };
        let command = self.ctx.launch.command.join(" ");
        match &self.pty {
            Some(pty) => {
                let size = current_size(&self.resize).unwrap_or(pty.size);
                let screen = crate::tui::fallback::render(
                    &self.identity,
                    &command,
                    error,
                    size.cols,
                    size.rows,
                );
                let _ = self.writer.data_bytes(Bytes::from(screen)).await;
                // Wait for a key (or a timeout) so the user can read it, then restore the screen.
                let _ = tokio::time::timeout(Duration::from_secs(120), async {
                    tokio::select! {
                        _ = self.input.recv() => {},
                        _ = self.closed.cancelled() => {},
                    }
                })
                .await;
                let _ = self
                    .writer
                    .data_bytes(Bytes::from_static(crate::tui::fallback::LEAVE))
                    .await;
            }
            None => {
                let text = crate::tui::fallback::plain(&self.identity, &command, error);
                let _ = self.writer.extended_data_bytes(1, Bytes::from(text)).await;
            }
        }
        finish(&self.writer, code).await;
    }
}

fn current_size(resize: &SharedResize) -> Option<TermSize> {
    resize.lock().ok().and_then(|r| r.size)
}

/// Sends exit-status, EOF and close.
async fn finish(writer: &ChannelWriteHalf<Msg>, code: u32) {
    let _ = writer.exit_status(code).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

/// Program output → channel. The channel writer waits for the client's window, and this loop
/// waits for the writer, so a slow client pauses the program instead of growing a buffer.
async fn pump_out(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    mut to: impl AsyncWrite + Unpin,
) -> u64 {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut total = 0u64;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                total += n as u64;
            }
        }
    }
    let _ = to.flush().await;
    total
}

/// Channel input → program.
async fn pump_in(mut from: mpsc::Receiver<Bytes>, mut to: Box<dyn AsyncWrite + Send + Unpin>) {
    while let Some(chunk) = from.recv().await {
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
    // Client EOF: close the program's stdin (for a PTY this drops our writer handle only).
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_classification() {
        assert_eq!(classify_exec("whoami", ExecPolicy::Refuse), Work::Whoami);
        assert_eq!(classify_exec("  whoami ", ExecPolicy::Args), Work::Whoami);
        assert!(matches!(
            classify_exec("rm -rf /", ExecPolicy::Refuse),
            Work::Refuse(_)
        ));
        assert_eq!(
            classify_exec("--model x; echo", ExecPolicy::Args),
            Work::Program(vec!["--model".into(), "x;".into(), "echo".into()])
        );
    }
}
