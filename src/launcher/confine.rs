//! What is done to the child between fork and exec: join the session's cgroup, set rlimits,
//! and drop to the user's account (groups, then gid, then uid, so nothing is left of root).
//!
//! Everything is computed before the fork; the child only makes system calls on prepared
//! values, since after a fork in a threaded program only async-signal-safe work is allowed.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::config::ResourceLimits;

use super::account::Account;
use super::cgroup::{Cgroups, LimitHit, SessionCgroup};

/// The cgroup hierarchy, looked for once (on v2 the gateway may move itself into a leaf).
fn cgroups() -> Option<&'static Cgroups> {
    static FOUND: OnceLock<Option<Cgroups>> = OnceLock::new();
    FOUND
        .get_or_init(|| match Cgroups::detect() {
            Ok(c) => {
                tracing::info!("session limits use {}", c.describe());
                Some(c)
            }
            Err(why) => {
                tracing::info!("session limits use rlimits only: {why}");
                None
            }
        })
        .as_ref()
}

/// Finds the cgroup hierarchy now (at start), so the first session does not pay for it and the
/// log says up front how limits will be enforced.
pub fn init(limits: &ResourceLimits) {
    if limits.cgroups && (limits.memory.is_some() || limits.processes.is_some()) {
        let _ = cgroups();
    }
}

/// Whether session cgroups cap the process count (else only RLIMIT_NPROC under run_as does).
pub fn cgroups_enforce_pids() -> bool {
    cgroups().is_some_and(|c| c.has_pids())
}

/// A credential switch, prepared.
#[derive(Debug, Clone)]
struct Switch {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

/// Owns a session's cgroup; removing it blocks briefly, so that happens off the async workers.
#[derive(Debug)]
pub struct CgroupGuard(Option<SessionCgroup>);

impl CgroupGuard {
    /// The cap hit so far, if any.
    pub fn hit(&self) -> Option<LimitHit> {
        self.0.as_ref().and_then(|c| c.hit())
    }
    /// Whether a process is still inside.
    pub fn populated(&self) -> bool {
        self.0.as_ref().is_some_and(|c| c.populated())
    }
    /// SIGKILL everything inside (blocking, short).
    pub fn kill_all(&self) {
        if let Some(c) = &self.0 {
            c.kill_all();
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || drop(cg));
                }
                Err(_) => drop(cg),
            }
        }
    }
}

/// Everything the child does to itself before exec.
#[derive(Debug, Default)]
pub struct Confinement {
    switch: Option<Switch>,
    rlimits: Vec<(i32, libc::rlimit)>,
    /// The session's cgroup, shared with the process handle that watches it.
    pub cgroup: Option<Arc<CgroupGuard>>,
    /// The limits, for messages.
    pub limits: ResourceLimits,
    /// The sandbox to build once the program's terminal is known.
    sandbox: Option<SandboxInputs>,
    /// The Landlock ruleset the child enforces on itself last.
    landlock: Option<Arc<std::os::fd::OwnedFd>>,
}

/// What a session's Landlock ruleset is made of, besides its terminal.
#[derive(Debug)]
struct SandboxInputs {
    sandbox: Arc<super::sandbox::Sandbox>,
    user_id: String,
    own: Vec<std::path::PathBuf>,
    program: std::path::PathBuf,
}

impl Confinement {
    /// Prepares the confinement for one session. Blocking (creates cgroup directories).
    pub fn prepare(account: &Account, limits: &ResourceLimits) -> io::Result<Confinement> {
        let me = rustix::process::geteuid().as_raw();
        let switch = (account.uid != me).then(|| Switch {
            uid: account.uid,
            gid: account.gid,
            groups: account.groups.clone(),
        });
        let cg = if limits.cgroups { cgroups() } else { None };
        let cg_memory = cg.is_some_and(|c| c.has_memory()) && limits.memory.is_some();
        let cg_pids = cg.is_some_and(|c| c.has_pids()) && limits.processes.is_some();
        let cgroup = match cg {
            Some(c) if cg_memory || cg_pids => {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                let name = format!(
                    "session-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                let created = c.create(
                    &name,
                    limits.memory.filter(|_| cg_memory).map(|m| m.as_u64()),
                    limits.processes.filter(|_| cg_pids),
                )?;
                Some(Arc::new(CgroupGuard(Some(created))))
            }
            _ => None,
        };
        let mut rlimits = Vec::new();
        let mut set = |res: libc::__rlimit_resource_t, soft: u64, hard: u64| {
            rlimits.push((
                res as i32,
                libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                },
            ));
        };
        if let (Some(m), false) = (limits.memory, cg_memory) {
            set(libc::RLIMIT_AS, m.as_u64(), m.as_u64());
        }
        if let (Some(n), false) = (limits.processes, cg_pids) {
            // RLIMIT_NPROC counts every process of the *account*: under the gateway's own
            // account that includes the gateway's threads, so it only makes sense per user.
            if switch.is_some() {
                set(libc::RLIMIT_NPROC, n, n);
            }
        }
        if let Some(n) = limits.open_files {
            set(libc::RLIMIT_NOFILE, n, n);
        }
        if let Some(t) = limits.cpu_time {
            // SIGXCPU at the limit (the session reports it), SIGKILL a second later.
            let s = t.as_secs().max(1);
            set(libc::RLIMIT_CPU, s, s + 1);
        }
        Ok(Confinement {
            switch,
            rlimits,
            cgroup,
            limits: limits.clone(),
            sandbox: None,
            landlock: None,
        })
    }

    /// Runs the program in `sandbox` for `user_id`, whose own directories are `own`; the
    /// ruleset is built by [`Confinement::seal`], and the child refuses to start without it.
    pub fn sandbox(
        &mut self,
        sandbox: Arc<super::sandbox::Sandbox>,
        user_id: &str,
        own: Vec<std::path::PathBuf>,
        program: &std::path::Path,
    ) {
        self.sandbox = Some(SandboxInputs {
            sandbox,
            user_id: user_id.to_owned(),
            own,
            program: program.to_owned(),
        });
    }

    /// Builds the sandbox's ruleset, allowing the program its own `terminal` (the PTY slave,
    /// which it may reopen as /dev/tty or /dev/stdout; other sessions' terminals stay out of
    /// reach). Blocking.
    pub fn seal(&mut self, terminal: Option<&std::path::Path>) -> io::Result<()> {
        if let Some(i) = &self.sandbox {
            let mut own = i.own.clone();
            own.extend(terminal.map(|t| t.to_owned()));
            let fd = i.sandbox.ruleset(&i.user_id, &own, &i.program)?;
            self.landlock = Some(Arc::new(fd));
        }
        Ok(())
    }

    /// Whether the program runs in a Landlock sandbox.
    pub fn sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    /// The account switch to make, as (uid, gid), when there is one.
    pub fn switches_to(&self) -> Option<(u32, u32)> {
        self.switch.as_ref().map(|s| (s.uid, s.gid))
    }

    /// What the child needs, owned, for the `pre_exec` closure.
    pub fn child_part(&self) -> ChildSetup {
        ChildSetup {
            switch: self.switch.clone(),
            rlimits: self.rlimits.clone(),
            cgroup: self.cgroup.clone(),
            sandboxed: self.sandbox.is_some(),
            landlock: self.landlock.clone(),
        }
    }
}

/// `capset(2)`'s header (`_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// The highest capability number dropping the bounding set walks to (CAP_CHECKPOINT_RESTORE is
/// 40 on current kernels; numbers a kernel does not know fail harmlessly).
const LAST_CAP: u32 = 63;

/// The part of a [`Confinement`] the child applies to itself.
#[derive(Debug)]
pub struct ChildSetup {
    switch: Option<Switch>,
    rlimits: Vec<(i32, libc::rlimit)>,
    cgroup: Option<Arc<CgroupGuard>>,
    sandboxed: bool,
    landlock: Option<Arc<std::os::fd::OwnedFd>>,
}

impl ChildSetup {
    /// Runs in the child after fork, before exec. Only system calls on prepared values.
    pub fn apply_in_child(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        #[allow(unsafe_code)]
        // SAFETY: plain system calls on values prepared before the fork; no allocation, no locks.
        unsafe {
            if let Some(cg) = &self.cgroup {
                if let Some(c) = &cg.0 {
                    for fd in c.join_fds() {
                        // "0" means the writing process.
                        if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
            }
            for (res, lim) in &self.rlimits {
                check(libc::setrlimit(*res as libc::__rlimit_resource_t, lim))?;
            }
            // No program may gain a capability, whatever account it runs as and whatever it
            // executes: the bounding set goes first (it needs CAP_SETPCAP, which a gateway
            // without it does not have to give up; no_new_privs below covers that case).
            for cap in 0..=LAST_CAP {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                );
            }
            if let Some(s) = &self.switch {
                check(libc::setgroups(s.groups.len(), s.groups.as_ptr()))?;
                check(libc::setresgid(s.gid, s.gid, s.gid))?;
                check(libc::setresuid(s.uid, s.uid, s.uid))?;
            }
            // A gateway running with capabilities instead of as root keeps them in its
            // children, with or without a uid change: drop every one (ambient ones would even
            // survive exec).
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ))?;
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Nothing executed later (setuid-root binaries, file capabilities, uid 0's
            // implicit ones) grants what the program does not have now.
            check(libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ))?;
            if let Some(s) = &self.switch {
                // Belt and braces: if root could be regained, the switch did not happen.
                if libc::setuid(0) == 0 && s.uid != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
        }
        // Last, so that everything above still had the file system it needed; enforcing needs
        // no_new_privs, set above.
        match &self.landlock {
            Some(fd) => super::sandbox::restrict_in_child(fd.as_raw_fd())?,
            // A sandbox was asked for but never built: the program does not start.
            None if self.sandboxed => return Err(io::Error::from_raw_os_error(libc::EPERM)),
            None => {}
        }
        Ok(())
    }
}

impl Confinement {
    /// Why the program ended, when a cap explains it.
    pub fn explain(&self, signal: Option<i32>) -> Option<LimitHit> {
        if let Some(hit) = self.cgroup.as_ref().and_then(|c| c.hit()) {
            return Some(hit);
        }
        if signal == Some(libc::SIGXCPU) && self.limits.cpu_time.is_some() {
            return Some(LimitHit::CpuTime);
        }
        None
    }

    /// The message for the user when `hit` stopped their program.
    pub fn describe(&self, hit: LimitHit) -> String {
        let l = &self.limits;
        match hit {
            LimitHit::Memory => format!(
                "stopped: the program went over this session's memory limit ({})",
                l.memory.map(human_bytes).unwrap_or_default()
            ),
            LimitHit::Processes => format!(
                "stopped: the program tried to run more than {} processes (this session's process limit)",
                l.processes.unwrap_or(0)
            ),
            LimitHit::CpuTime => format!(
                "stopped: the program used this session's CPU time limit ({})",
                l.cpu_time
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_default()
            ),
        }
    }

    /// For an abnormal exit no cgroup explains: the limits that may have caused it (rlimits
    /// make allocations and forks fail inside the program rather than stopping it).
    pub fn hint(&self) -> Option<String> {
        let l = &self.limits;
        let mut parts = Vec::new();
        if let (Some(m), true) = (
            l.memory,
            self.rlimits
                .iter()
                .any(|(r, _)| *r == libc::RLIMIT_AS as i32),
        ) {
            parts.push(format!("{} of memory per process", human_bytes(m)));
        }
        if let (Some(n), true) = (
            l.processes,
            self.rlimits
                .iter()
                .any(|(r, _)| *r == libc::RLIMIT_NPROC as i32),
        ) {
            parts.push(format!("{n} processes"));
        }
        if let Some(n) = l.open_files {
            parts.push(format!("{n} open files"));
        }
        if parts.is_empty() {
            None
        } else {
            Some(format!(
                "this session is limited to {}; the program may have run into that",
                parts.join(", ")
            ))
        }
    }
}

/// `64 MiB`, `1.5 GiB`: whole units when exact.
fn human_bytes(b: bytesize::ByteSize) -> String {
    let n = b.as_u64();
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n / size)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(bytesize::ByteSize::mib(64)), "64 MiB");
        assert_eq!(human_bytes(bytesize::ByteSize::mib(1536)), "1.5 GiB");
        assert_eq!(human_bytes(bytesize::ByteSize::b(100)), "100 bytes");
    }
}
