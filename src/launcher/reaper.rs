//! Ends the programs of a gateway that died without ending them itself (SIGKILL, the OOM killer,
//! an abort): nothing a user started may run on with nobody attached.
//!
//! At start the gateway runs a copy of its own binary as a small watcher (`hermes-ssh-gateway
//! reaper`) and keeps the write end of a pipe to it. The launcher tells it each program's process
//! group as it starts and ends. The kernel closes the pipe when the gateway dies, however it
//! dies, and the watcher then hangs up every group still listed and kills what remains.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that forked exits (tokio's blocking
//! threads come and go), it is cleared by the switch to the user's account, and it reaches only
//! the direct child, not what the program started.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The subcommand the watcher runs as.
pub const SUBCOMMAND: &str = "reaper";

/// After the hang-up, how long programs get before SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

struct Watcher {
    to: Mutex<ChildStdin>,
    _child: Child,
}

static WATCHER: OnceLock<Watcher> = OnceLock::new();

/// Starts the watcher for this process. Without it (a failure is logged) programs are still
/// ended by a gateway that stops normally.
pub fn start() -> io::Result<()> {
    if WATCHER.get().is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .env_clear()
        .spawn()?;
    let to = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no pipe to the reaper"))?;
    let _ = WATCHER.set(Watcher {
        to: Mutex::new(to),
        _child: child,
    });
    Ok(())
}

fn tell(line: String) {
    if let Some(w) = WATCHER.get() {
        // A few bytes into a pipe the watcher drains at once: this does not block in practice.
        let mut to = w.to.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = to.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "the reaper is gone; programs would outlive a crash");
        }
    }
}

/// A program started in process group `pgid`.
pub fn watch(pgid: i32) {
    tell(format!("+g{pgid}\n"));
}

/// Process group `pgid` is gone: it must not be signalled later (its number may be reused).
pub fn forget(pgid: i32) {
    tell(format!("-g{pgid}\n"));
}

/// A session cgroup (it also holds what left the program's group: `setsid`, daemons).
pub fn watch_cgroup(dir: &std::path::Path) {
    tell(format!("+c{}\n", dir.display()));
}

/// A session cgroup was emptied and removed.
pub fn forget_cgroup(dir: &std::path::Path) {
    tell(format!("-c{}\n", dir.display()));
}

/// The watcher's main: reads `+g<pgid>` / `-g<pgid>` and `+c<dir>` / `-c<dir>` lines until the
/// gateway's end of the pipe closes, then ends every group and cgroup still listed. Signals meant for the gateway (Ctrl-C in its
/// terminal, a SIGTERM to its process group) are ignored: only the pipe says it is gone.
pub fn run() -> i32 {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        // SAFETY: installing SIG_IGN runs no code in a signal handler.
        #[allow(unsafe_code)]
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let mut groups = HashSet::new();
    let mut cgroups = HashSet::new();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Some((op, rest)) = line.split_at_checked(2) else {
            continue;
        };
        match (op, rest.parse::<i32>()) {
            ("+g", Ok(p)) if p > 1 => {
                groups.insert(p);
            }
            ("-g", Ok(p)) => {
                groups.remove(&p);
            }
            ("+c", _) => {
                cgroups.insert(std::path::PathBuf::from(rest));
            }
            ("-c", _) => {
                cgroups.remove(std::path::Path::new(rest));
            }
            _ => {}
        }
    }
    if groups.is_empty() && cgroups.is_empty() {
        return 0;
    }
    eprintln!(
        "hermes-ssh-gateway reaper: the gateway is gone; ending {} program group(s) it left running",
        groups.len().max(cgroups.len())
    );
    end_groups(&groups);
    for dir in &cgroups {
        super::cgroup::kill_dir(dir);
        let _ = std::fs::remove_dir(dir);
    }
    0
}

fn end_groups(groups: &HashSet<i32>) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let alive = |g: &i32| killpg(Pid::from_raw(*g), None).is_ok();
    for g in groups {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGHUP);
        let _ = killpg(Pid::from_raw(*g), Signal::SIGCONT);
    }
    let deadline = Instant::now() + HANGUP_GRACE;
    while Instant::now() < deadline && groups.iter().any(alive) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for g in groups.iter().filter(|g| alive(g)) {
        let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
    }
}
