//! A running program: async I/O on the PTY master (or pipes), resize, exit, and group kill.
//!
//! PTY I/O runs on the tokio reactor: the master fd is duplicated, made non-blocking and
//! registered with `AsyncFd`, so a session costs no thread. The exit is watched through a pidfd
//! the same way, and the child is reaped with `waitid(P_PIDFD)`, which also gives the exact
//! signal that ended it.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::confine::CgroupGuard;
use super::{Account, Confinement, LaunchError, LimitHit, Prepared, TermSize, TerminalModes};

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
    /// The session's cgroup: it also holds processes that left the group (setsid, daemons).
    cgroup: Option<Arc<CgroupGuard>>,
}

impl ProcessGroup {
    /// The group id (the program's pid).
    pub fn id(&self) -> i32 {
        self.pgid.as_raw_nonzero().get()
    }

    /// Whether any process of the group (or of the session's cgroup) is still alive.
    pub fn is_alive(&self) -> bool {
        rustix::process::test_kill_process_group(self.pgid).is_ok()
            || self.cgroup.as_ref().is_some_and(|c| c.populated())
    }

    /// SIGHUP to the group (and SIGCONT, so stopped members see it), then SIGKILL to whatever is
    /// left after the grace period.
    pub async fn terminate(&self) {
        if !self.is_alive() {
            super::reaper::forget(self.id());
            return;
        }
        let _ = rustix::process::kill_process_group(self.pgid, Signal::HUP);
        let _ = rustix::process::kill_process_group(self.pgid, Signal::CONT);
        let deadline = tokio::time::Instant::now() + self.grace;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !self.is_alive() {
                super::reaper::forget(self.id());
                return;
            }
        }
        tracing::debug!(
            pgid = self.id(),
            "process group outlived SIGHUP; sending SIGKILL"
        );
        let _ = rustix::process::kill_process_group(self.pgid, Signal::KILL);
        if let Some(cg) = self.cgroup.clone() {
            let _ = tokio::task::spawn_blocking(move || cg.kill_all()).await;
        }
        super::reaper::forget(self.id());
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
    /// Another writer into the program's terminal, for a client that attaches later.
    pub fn writer(&self) -> Box<dyn AsyncWrite + Send + Unpin> {
        Box::new(PtyIo(self.0.clone()))
    }

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

/// What starting a program gives the front, all at once: the process and its byte streams (and,
/// from `spawn_pty`, the terminal's resize handle beside them). Nothing is started without its
/// streams being handed over, so there is no "started but no I/O" path that skips the session's
/// end.
pub struct Spawned {
    /// The running program.
    pub process: Process,
    /// Its byte streams.
    pub io: ProcessIo,
}

/// A started program. Dropping it ends the program's whole process group (in the background).
pub struct Process {
    exit: watch::Receiver<Option<ExitStatus>>,
    group: ProcessGroup,
    confinement: Confinement,
    account: Account,
}

impl Process {
    /// The program's pid (also its process-group id).
    pub fn pid(&self) -> i32 {
        self.group.id()
    }

    /// The process group.
    pub fn group(&self) -> ProcessGroup {
        self.group.clone()
    }

    /// Resolves when the session's program runs into a cap that a cgroup reports (memory, process
    /// count); never, without a session cgroup. The caller decides to end the session.
    pub fn limit_hit(&self) -> impl Future<Output = LimitHit> + Send + 'static {
        let cg = self.confinement.cgroup.clone();
        async move {
            let Some(cg) = cg else {
                return std::future::pending().await;
            };
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                // Two small reads from cgroupfs, which lives in memory: cheaper inline than a
                // blocking-pool round trip every tick for every session.
                if let Some(hit) = cg.hit() {
                    return hit;
                }
            }
        }
    }

    /// The Unix account the program runs as.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The limits this program runs under (for explaining how it ended).
    pub fn confinement(&self) -> &Confinement {
        &self.confinement
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
            super::reaper::forget(group.id());
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move { group.terminate().await });
            }
            Err(_) => {
                let _ = rustix::process::kill_process_group(group.pgid, Signal::KILL);
                super::reaper::forget(group.id());
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

/// Opens a new PTY pair: the master (ours) and the slave (the program's terminal).
fn open_pty(size: TermSize) -> Result<(OwnedFd, OwnedFd, std::ffi::CString), LaunchError> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(other("allocating a PTY"))?;
    rustix::pty::grantpt(&master).map_err(other("grantpt"))?;
    rustix::pty::unlockpt(&master).map_err(other("unlockpt"))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(other("ptsname"))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(other("opening the PTY slave"))?;
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: size.pixel_width,
            ws_ypixel: size.pixel_height,
        },
    )
    .map_err(other("setting the PTY size"))?;
    Ok((master, slave, name))
}

/// The command for `prepared`, with the clean environment and, in the child before exec, the
/// confinement (cgroup, rlimits, account switch) and `extra` (session/terminal set-up).
fn command(
    prepared: &Prepared,
    extra: impl Fn() -> io::Result<()> + Send + Sync + 'static,
) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(&prepared.program);
    cmd.arg0(&prepared.argv[0])
        .args(&prepared.argv[1..])
        .env_clear()
        .envs(prepared.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&prepared.cwd);
    let confinement = prepared.confinement.child_part();
    // SAFETY: the closure runs in the forked child before exec. It only makes system calls on
    // values prepared before the fork (no allocation, no locks): setsid, ioctl, write, setrlimit,
    // setgroups, setresgid, setresuid.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            extra()?;
            confinement.apply_in_child()
        });
    }
    cmd
}

pub(super) async fn spawn_pty(
    prepared: Prepared,
    size: TermSize,
    modes: TerminalModes,
) -> Result<(Spawned, Resizer), LaunchError> {
    let grace = prepared.kill_grace;
    // openpty, fork and exec are blocking system calls: keep them off the async workers.
    let (fd, pid, prepared) =
        tokio::task::spawn_blocking(move || -> Result<(OwnedFd, Pid, Prepared), LaunchError> {
            let mut prepared = prepared;
            let (master, slave, name) = open_pty(size)?;
            let terminal = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name.as_bytes()));
            prepared
                .confinement
                .seal(Some(&terminal))
                .map_err(|e| LaunchError::Sandbox(e.to_string()))?;
            if let Some((uid, _)) = prepared.confinement.switches_to() {
                // As sshd does: the terminal belongs to the user it serves, so programs that
                // reopen it by name (ttyname, pinentry, mesg) can.
                rustix::fs::fchown(&slave, Some(rustix::fs::Uid::from_raw(uid)), None)
                    .map_err(other("chown of the PTY to the user's account"))?;
            }
            if let Err(e) = modes.apply(&master) {
                tracing::debug!(error = %e, "could not apply the client's terminal modes");
            }
            let stdio = || -> Result<std::process::Stdio, LaunchError> {
                Ok(slave
                    .try_clone()
                    .map_err(other("dup of the PTY slave"))?
                    .into())
            };
            let mut cmd = command(&prepared, || {
                // A new session with the PTY as its controlling terminal (fd 0 is the slave).
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                Ok(())
            });
            cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
            let child = cmd
                .spawn()
                .map_err(|e| classify_spawn_error(&prepared, &e))?;
            // The slave must be closed here (the Command holds copies too), or the master never
            // sees EOF when the program exits.
            drop(cmd);
            drop(slave);
            let pid = pid_of(child.id())?;
            super::reaper::watch(pid.as_raw_nonzero().get());
            // We reap through the pidfd; the std Child is dropped without waiting.
            drop(child);
            rustix::fs::fcntl_setfl(
                &master,
                rustix::fs::fcntl_getfl(&master).map_err(other("fcntl"))?
                    | rustix::fs::OFlags::NONBLOCK,
            )
            .map_err(other("fcntl"))?;
            Ok((master, pid, prepared))
        })
        .await
        .map_err(other("spawn task"))??;

    let group = ProcessGroup {
        pgid: pid,
        grace,
        cgroup: prepared.confinement.cgroup.clone(),
    };
    let exit = watch_exit(pid)?;
    let fd = Arc::new(
        register(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
        .map_err(other("registering the PTY"))?,
    );
    let spawned = Spawned {
        process: Process {
            exit,
            group,
            confinement: prepared.confinement,
            account: prepared.account,
        },
        io: ProcessIo {
            input: Box::new(PtyIo(fd.clone())),
            output: Box::new(PtyIo(fd.clone())),
            stderr: None,
        },
    };
    Ok((spawned, Resizer(fd)))
}

/// What `execve` said, as the user reads it: decided by the error number, not its text.
fn classify_spawn_error(prepared: &Prepared, e: &io::Error) -> LaunchError {
    let program = prepared.program.display().to_string();
    match e.raw_os_error() {
        // The program, or the interpreter its `#!` line names, is not there.
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => LaunchError::NotFound {
            program,
            path: String::new(),
        },
        // No execute permission, a noexec mount, or not a format the kernel can run.
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EPERM) => {
            LaunchError::NotExecutable {
                program,
                detail: e.to_string(),
            }
        }
        _ => LaunchError::Other(format!("starting {program}: {e}")),
    }
}

pub(super) fn spawn_pipes(mut prepared: Prepared) -> Result<Spawned, LaunchError> {
    use std::process::Stdio;
    prepared
        .confinement
        .seal(None)
        .map_err(|e| LaunchError::Sandbox(e.to_string()))?;
    // A session of its own (so also its own process group, which hang-up signals): without
    // one it would share the gateway's controlling terminal, where a program could open
    // /dev/tty and, with TIOCSTI, type into the operator's shell.
    let mut std_cmd = command(&prepared, || {
        rustix::process::setsid()?;
        Ok(())
    });
    std_cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(std_cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| classify_spawn_error(&prepared, &e))?;
    let pid = pid_of(child.id().unwrap_or(0))?;
    super::reaper::watch(pid.as_raw_nonzero().get());
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
    Ok(Spawned {
        process: Process {
            exit: rx,
            group: ProcessGroup {
                pgid: pid,
                grace: prepared.kill_grace,
                cgroup: prepared.confinement.cgroup.clone(),
            },
            confinement: prepared.confinement,
            account: prepared.account,
        },
        io: ProcessIo {
            input: Box::new(stdin),
            output: Box::new(stdout),
            stderr: Some(Box::new(stderr)),
        },
    })
}
