//! A running program: async I/O on the PTY master (or pipes), resize, exit, and group kill.
//!
//! PTY I/O runs on the tokio reactor: the master fd is duplicated, made non-blocking and
//! registered with `AsyncFd`, so a session costs no thread. The exit is watched through a pidfd
//! the same way, and the child is reaped with `waitid(P_PIDFD)`, which also gives the exact
//! signal that ended it.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::{LaunchError, Prepared, TermSize, TerminalModes};

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal ended it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// The code to report to a client: the exit code, or 128 + the signal (as shells do).
    pub fn exit_code(&self) -> u32 {
        match (self.code, self.signal) {
            (Some(c), _) => c as u32,
            (None, Some(s)) => 128 + s as u32,
            (None, None) => 255,
        }
    }

    /// The signal's name without `SIG` (as SSH's `exit-signal` wants), when a signal ended it.
    pub fn signal_name(&self) -> Option<&'static str> {
        let s = self.signal?;
        nix::sys::signal::Signal::try_from(s)
            .ok()
            .map(|sig| sig.as_str().trim_start_matches("SIG"))
    }
}

/// A handle on the program's process group, to signal everything it started.
#[derive(Debug, Clone)]
pub struct ProcessGroup {
    pgid: Pid,
    grace: Duration,
}

impl ProcessGroup {
    /// The group id (the program's pid).
    pub fn id(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    /// Whether any process of the group is still alive (zombies included).
    pub fn is_alive(&self) -> bool {
        rustix::process::test_kill_process_group(self.pgid).is_ok()
    }

    /// SIGHUP to the group (and SIGCONT, so stopped members see it), then SIGKILL to whatever is
    /// left after the grace period.
    pub async fn terminate(&self) {
        if !self.is_alive() {
            return;
        }
        let _ = rustix::process::kill_process_group(self.pgid, Signal::HUP);
        let _ = rustix::process::kill_process_group(self.pgid, Signal::CONT);
        let deadline = tokio::time::Instant::now() + self.grace;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !self.is_alive() {
                return;
            }
        }
        tracing::debug!(
            pgid = self.id(),
            "process group outlived SIGHUP; sending SIGKILL"
        );
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
    }
}

/// The program's byte streams, taken once by the front that pumps them.
pub struct ProcessIo {
    /// What the user types goes here.
    pub input: Box<dyn AsyncWrite + Send + Unpin>,
    /// The program's output (PTY: stdout and stderr together).
    pub output: Box<dyn AsyncRead + Send + Unpin>,
    /// Standard error, separately (pipes only).
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

/// Resizes a PTY; cheap to clone.
#[derive(Clone)]
pub struct Resizer(Arc<AsyncFd<OwnedFd>>);

impl Resizer {
    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, size: TermSize) -> io::Result<()> {
        rustix::termios::tcsetwinsize(
            self.0.get_ref(),
            rustix::termios::Winsize {
                ws_row: size.rows,
                ws_col: size.cols,
                ws_xpixel: size.pixel_width,
                ws_ypixel: size.pixel_height,
            },
        )
        .map_err(io::Error::from)
    }
}

/// A started program. Dropping it ends the program's whole process group (in the background).
pub struct Process {
    io: Option<ProcessIo>,
    resizer: Option<Resizer>,
    exit: watch::Receiver<Option<ExitStatus>>,
    group: ProcessGroup,
}

impl Process {
    /// The program's pid (also its process-group id).
    pub fn pid(&self) -> i32 {
        self.group.id()
    }

    /// The byte streams; `None` after the first call.
    pub fn take_io(&mut self) -> Option<ProcessIo> {
        self.io.take()
    }

    /// A resize handle, for a PTY.
    pub fn resizer(&self) -> Option<Resizer> {
        self.resizer.clone()
    }

    /// The process group.
    pub fn group(&self) -> ProcessGroup {
        self.group.clone()
    }

    /// Resolves when the program has exited (and was reaped).
    pub fn exited(&self) -> impl Future<Output = ExitStatus> + Send + 'static {
        let mut rx = self.exit.clone();
        async move {
            loop {
                if let Some(s) = *rx.borrow_and_update() {
                    return s;
                }
                if rx.changed().await.is_err() {
                    // The watcher task is gone without a status: only at runtime shutdown.
                    return ExitStatus {
                        code: None,
                        signal: None,
                    };
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = self.group.clone();
        if !group.is_alive() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move { group.terminate().await });
            }
            Err(_) => {
                let _ = rustix::process::kill_process_group(group.pgid, Signal::KILL);
            }
        }
    }
}

fn other<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> LaunchError {
    move |e| LaunchError::Other(format!("{what}: {e}"))
}

fn pid_of(raw: u32) -> Result<Pid, LaunchError> {
    i32::try_from(raw)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| LaunchError::Other(format!("invalid pid {raw}")))
}

/// Watches a child through a pidfd and reaps it; publishes its status.
fn watch_exit(pid: Pid) -> Result<watch::Receiver<Option<ExitStatus>>, LaunchError> {
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK)
        .map_err(other("pidfd_open"))?;
    let pidfd =
        register(pidfd, tokio::io::Interest::READABLE).map_err(other("registering the pidfd"))?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = pidfd.readable().await else {
                break;
            };
            match rustix::process::waitid(
                WaitId::PidFd(pidfd.get_ref().as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(st)) => {
                    let status = ExitStatus {
                        code: st.exit_status(),
                        signal: st.terminating_signal(),
                    };
                    let _ = tx.send(Some(status));
                    break;
                }
                Ok(None) => guard.clear_ready(),
                Err(e) => {
                    tracing::warn!(error = %e, "waitid failed");
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Registers an fd we own with the reactor.
fn register(fd: OwnedFd, interest: tokio::io::Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, so it stays open exactly as long as it is
    // registered and nothing else can close or replace it.
    #[allow(unsafe_code)]
    let fd = unsafe { AsyncFd::register_with_interest(fd, interest) };
    fd.map_err(|e| e.into())
}

/// The PTY master, non-blocking on the reactor.
struct PtyIo(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for PtyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed (the program and its children are gone): EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Duplicates the master fd portable-pty owns, so our copy outlives its `MasterPty`.
fn dup_master(master: &dyn portable_pty::MasterPty) -> Result<OwnedFd, LaunchError> {
    let raw = master
        .as_raw_fd()
        .ok_or_else(|| LaunchError::Other("the PTY master has no fd".into()))?;
    // SAFETY: `raw` is the open master fd owned by `master`, which outlives this borrow; we only
    // duplicate it. portable-pty exposes no `AsFd`, so this one borrow is unavoidable.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    rustix::io::fcntl_dupfd_cloexec(borrowed, 3).map_err(other("dup of the PTY master"))
}

pub(super) async fn spawn_pty(
    prepared: Prepared,
    size: TermSize,
    modes: TerminalModes,
) -> Result<Process, LaunchError> {
    let grace = prepared.kill_grace;
    // openpty, fork and exec are blocking system calls: keep them off the async workers.
    let (fd, pid) = tokio::task::spawn_blocking(move || -> Result<(OwnedFd, Pid), LaunchError> {
        use portable_pty::{CommandBuilder, PtySize};
        let pair = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows: size.rows,
                cols: size.cols,
                pixel_width: size.pixel_width,
                pixel_height: size.pixel_height,
            })
            .map_err(other("allocating a PTY"))?;
        let fd = dup_master(&*pair.master)?;
        if let Err(e) = modes.apply(&fd) {
            tracing::debug!(error = %e, "could not apply the client's terminal modes");
        }
        let mut argv: Vec<std::ffi::OsString> = Vec::with_capacity(prepared.argv.len());
        argv.push(prepared.program.clone().into_os_string());
        argv.extend(prepared.argv.iter().skip(1).map(Into::into));
        let mut cmd = CommandBuilder::from_argv(argv);
        cmd.env_clear();
        for (k, v) in &prepared.env {
            cmd.env(k, v);
        }
        cmd.cwd(&prepared.cwd);
        let child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| classify_spawn_error(&prepared, &e.to_string()))?;
        // The slave must be closed here, or the master never sees EOF when the program exits.
        drop(pair.slave);
        let pid = pid_of(child.process_id().unwrap_or(0))?;
        // We reap through the pidfd; the std Child inside is dropped without waiting.
        drop(child);
        drop(pair.master);
        rustix::fs::fcntl_setfl(
            &fd,
            rustix::fs::fcntl_getfl(&fd).map_err(other("fcntl"))? | rustix::fs::OFlags::NONBLOCK,
        )
        .map_err(other("fcntl"))?;
        Ok((fd, pid))
    })
    .await
    .map_err(other("spawn task"))??;

    let group = ProcessGroup { pgid: pid, grace };
    let exit = watch_exit(pid)?;
    let fd = Arc::new(
        register(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
        .map_err(other("registering the PTY"))?,
    );
    Ok(Process {
        io: Some(ProcessIo {
            input: Box::new(PtyIo(fd.clone())),
            output: Box::new(PtyIo(fd.clone())),
            stderr: None,
        }),
        resizer: Some(Resizer(fd)),
        exit,
        group,
    })
}

fn classify_spawn_error(prepared: &Prepared, msg: &str) -> LaunchError {
    let program = prepared.program.display().to_string();
    if msg.contains("not executable") || msg.contains("ermission denied") {
        LaunchError::NotExecutable {
            program,
            detail: msg.to_owned(),
        }
    } else if msg.contains("No such file") || msg.contains("not exist") {
        LaunchError::NotFound {
            program,
            path: String::new(),
        }
    } else {
        LaunchError::Other(format!("starting {program}: {msg}"))
    }
}

pub(super) fn spawn_pipes(prepared: Prepared) -> Result<Process, LaunchError> {
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;
    let mut std_cmd = std::process::Command::new(&prepared.program);
    std_cmd
        .arg0(&prepared.argv[0])
        .args(&prepared.argv[1..])
        .env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&prepared.cwd)
        // Its own process group, so hang-up can signal everything it starts.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(std_cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| classify_spawn_error(&prepared, &e.to_string()))?;
    let pid = pid_of(child.id().unwrap_or(0))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(LaunchError::Other("pipes were not created".into()));
    };
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        if let Ok(st) = child.wait().await {
            let _ = tx.send(Some(ExitStatus {
                code: st.code(),
                signal: st.signal(),
            }));
        }
    });
    Ok(Process {
        io: Some(ProcessIo {
            input: Box::new(stdin),
            output: Box::new(stdout),
            stderr: Some(Box::new(stderr)),
        }),
        resizer: None,
        exit: rx,
        group: ProcessGroup {
            pgid: pid,
            grace: prepared.kill_grace,
        },
    })
}
