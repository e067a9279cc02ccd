//! One cgroup per session, when the gateway may create them: the exact way to cap a session's
//! memory and process count, to learn that a cap was hit, and to kill everything a program
//! started, including processes that left its process group.
//!
//! cgroup v2 (unified) is used when the gateway's own cgroup has the `memory` and `pids`
//! controllers available and is writable (systemd `Delegate=yes`, or root on a plain v2
//! system). Since v2 forbids processes in a cgroup whose controllers are handed down, the
//! gateway first moves itself into a `gateway` leaf beside the sessions. On hosts that still
//! mount cgroup v1 controllers (many container VMs), the `memory` and `pids` hierarchies are
//! used the same way. With neither, sessions fall back to rlimits (see `limits.rs`).

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Which cgroup interface the host offers.
#[derive(Debug, Clone)]
enum Kind {
    /// Session cgroups are created under `parent`, one directory holding every controller.
    V2 { parent: PathBuf },
    /// One directory per controller hierarchy.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

/// Where session cgroups go; found once at start.
#[derive(Debug, Clone)]
pub struct Cgroups {
    kind: Kind,
}

/// The cap a session's program ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitHit {
    /// The kernel's OOM killer ended a process of the session at the memory cap.
    Memory,
    /// A fork or clone was refused at the process cap.
    Processes,
    /// A process used up its CPU time (SIGXCPU).
    CpuTime,
}

impl LimitHit {
    /// The `[session.limits]` key of the cap, for logs and the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Memory => "memory",
            LimitHit::Processes => "processes",
            LimitHit::CpuTime => "cpu_time",
        }
    }
}

/// Why there is no cgroup hierarchy the gateway can use (session limits then use rlimits only).
#[derive(Debug, thiserror::Error)]
pub enum NoCgroups {
    /// A cgroup file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Neither v1 hierarchy has the controllers, and there is no v2 one.
    #[error("no cgroup hierarchy with the memory or pids controller")]
    NoControllers,
    /// The v1 hierarchies exist but the gateway may not make its directory in them.
    #[error("the cgroup v1 memory and pids hierarchies are not writable")]
    V1NotWritable,
    /// The v2 controllers are not handed down to the gateway's cgroup.
    #[error("cgroup v2 at {}: the memory and pids controllers are not delegated to the gateway (available: {available:?})", at.display())]
    NotDelegated {
        /// The gateway's cgroup.
        at: PathBuf,
        /// The controllers it has.
        available: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> NoCgroups + '_ {
    move |source| NoCgroups::Io {
        path: path.to_owned(),
        source,
    }
}

impl Cgroups {
    /// Finds a usable cgroup hierarchy for `memory` and `pids`, or says why there is none.
    pub fn detect() -> Result<Cgroups, NoCgroups> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(io_at(Path::new("/proc/self/cgroup")))?;
        let v1_path = |controller: &str| {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                ctrls
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_owned())
            })
        };
        let v1_memory = v1_path("memory");
        let v1_pids = v1_path("pids");
        if v1_memory.is_none() && v1_pids.is_none() {
            if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
                return detect_v2(path);
            }
            return Err(NoCgroups::NoControllers);
        }
        let base = |ctrl: &str, path: Option<String>| -> Option<PathBuf> {
            let path = path?;
            let dir = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(path.trim_start_matches('/'))
                .join("hermes-ssh-gateway");
            match fs::create_dir_all(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cgroup v1 hierarchy not writable");
                    None
                }
            }
        };
        let memory = base("memory", v1_memory);
        let pids = base("pids", v1_pids);
        if memory.is_none() && pids.is_none() {
            return Err(NoCgroups::V1NotWritable);
        }
        Ok(Cgroups {
            kind: Kind::V1 { memory, pids },
        })
    }

    /// A short description for the log.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::V2 { parent } => format!("cgroup v2 at {}", parent.display()),
            Kind::V1 { memory, pids } => format!(
                "cgroup v1 (memory: {}, pids: {})",
                memory
                    .as_deref()
                    .map_or("none".into(), |p| p.display().to_string()),
                pids.as_deref()
                    .map_or("none".into(), |p| p.display().to_string())
            ),
        }
    }

    /// Whether memory (and pids) caps are enforced through cgroups.
    pub fn has_memory(&self) -> bool {
        match &self.kind {
            Kind::V2 { .. } => true,
            Kind::V1 { memory, .. } => memory.is_some(),
        }
    }

    /// Whether the process cap is enforced through cgroups.
    pub fn has_pids(&self) -> bool {
        match &self.kind {
            Kind::V2 { .. } => true,
            Kind::V1 { pids, .. } => pids.is_some(),
        }
    }

    /// Creates the cgroup for one session with the given caps.
    pub fn create(
        &self,
        name: &str,
        memory: Option<u64>,
        pids: Option<u64>,
    ) -> io::Result<SessionCgroup> {
        let mut cg = SessionCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            memory_events: None,
            pids_events: None,
        };
        match &self.kind {
            Kind::V2 { parent } => {
                let dir = parent.join(name);
                fs::create_dir(&dir)?;
                cg.dirs.push(dir.clone());
                if let Some(m) = memory {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    // Swapping out instead of stopping would only make the program crawl.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                    cg.memory_events = Some((dir.join("memory.events"), "oom_kill"));
                }
                if let Some(p) = pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                    cg.pids_events = Some(dir.join("pids.events"));
                }
                cg.procs.push(open_procs(&dir)?);
            }
            Kind::V1 {
                memory: mem_base,
                pids: pids_base,
            } => {
                if let (Some(base), Some(m)) = (mem_base, memory) {
                    let dir = base.join(name);
                    fs::create_dir(&dir)?;
                    cg.dirs.push(dir.clone());
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                    let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &m.to_string());
                    cg.memory_events = Some((dir.join("memory.oom_control"), "oom_kill"));
                    cg.procs.push(open_procs(&dir)?);
                }
                if let (Some(base), Some(p)) = (pids_base, pids) {
                    let dir = base.join(name);
                    fs::create_dir(&dir)?;
                    cg.dirs.push(dir.clone());
                    write(&dir.join("pids.max"), &p.to_string())?;
                    cg.pids_events = Some(dir.join("pids.events"));
                    cg.procs.push(open_procs(&dir)?);
                }
            }
        }
        // Before any program joins: a gateway that dies still gets the cgroup emptied.
        for dir in &cg.dirs {
            super::reaper::watch_cgroup(dir);
        }
        Ok(cg)
    }
}

fn detect_v2(own: &str) -> Result<Cgroups, NoCgroups> {
    let root = Path::new("/sys/fs/cgroup");
    let root = if root.join("cgroup.controllers").exists() {
        root.to_owned()
    } else {
        root.join("unified")
    };
    let mine = root.join(own.trim_start_matches('/'));
    let controllers = mine.join("cgroup.controllers");
    let available = fs::read_to_string(&controllers).map_err(io_at(&controllers))?;
    let has = |c: &str| available.split_whitespace().any(|x| x == c);
    if !has("memory") || !has("pids") {
        return Err(NoCgroups::NotDelegated {
            at: mine,
            available: available.trim().to_owned(),
        });
    }
    let enabled = fs::read_to_string(mine.join("cgroup.subtree_control")).unwrap_or_default();
    let on = |c: &str| enabled.split_whitespace().any(|x| x == c);
    if !(on("memory") && on("pids")) {
        // v2's "no internal processes" rule: controllers can be handed to children only when
        // this cgroup holds no process, so the gateway moves into a leaf of its own first.
        let leaf = mine.join("gateway");
        fs::create_dir_all(&leaf).map_err(io_at(&leaf))?;
        let procs = fs::read_to_string(mine.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            // Threads follow their process in v2; another process here would block the switch.
            let _ = write(&leaf.join("cgroup.procs"), pid);
        }
        let control = mine.join("cgroup.subtree_control");
        write(&control, "+memory +pids").map_err(io_at(&control))?;
    }
    Ok(Cgroups {
        kind: Kind::V2 { parent: mine },
    })
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    // Opened here, written in the child between fork and exec ("0" = the writing process), so
    // the program is inside its cgroup before its first instruction.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    Ok(OwnedFd::from(f))
}

/// A session's cgroup(s). Dropping it kills whatever is left inside and removes the directories.
#[derive(Debug)]
pub struct SessionCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
    memory_events: Option<(PathBuf, &'static str)>,
    pids_events: Option<PathBuf>,
}

impl SessionCgroup {
    /// The `cgroup.procs` files the child joins before exec.
    pub fn join_fds(&self) -> &[OwnedFd] {
        &self.procs
    }

    /// Which cap, if any, has been hit so far.
    pub fn hit(&self) -> Option<LimitHit> {
        if let Some((path, key)) = &self.memory_events {
            if counter(path, key) > 0 {
                return Some(LimitHit::Memory);
            }
        }
        if let Some(path) = &self.pids_events {
            if counter(path, "max") > 0 {
                return Some(LimitHit::Processes);
            }
        }
        None
    }

    /// Whether any process is still inside.
    pub fn populated(&self) -> bool {
        self.dirs
            .iter()
            .any(|d| fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty()))
    }

    /// SIGKILL to every process inside, repeated until none is left (a fork bomb keeps forking
    /// while it is being killed; each round removes what the last one missed).
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            kill_dir(dir);
        }
    }
}

/// SIGKILL to every process in the cgroup directory `dir`, until none is left.
pub fn kill_dir(dir: &Path) {
    // v2 kernels since 5.14 kill a whole cgroup atomically.
    if write(&dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for _ in 0..100 {
        let Ok(list) = fs::read_to_string(dir.join("cgroup.procs")) else {
            break;
        };
        let pids: Vec<i32> = list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            // The kernel removes killed processes asynchronously; retry briefly.
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            super::reaper::forget_cgroup(dir);
        }
    }
}

/// The value of `key` in a flat-keyed cgroup file such as `memory.events`.
fn counter(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_key() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("memory.events");
        fs::write(&p, "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter(&p, "oom_kill"), 2);
        assert_eq!(counter(&p, "max"), 4);
        assert_eq!(counter(&p, "missing"), 0);
        assert_eq!(counter(&tmp.path().join("nope"), "max"), 0);
    }
}
