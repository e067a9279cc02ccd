//! The PTY launcher: runs the configured program for an [`Identity`], in a PTY or with pipes.
//!
//! It knows neither SSH nor HTTP: a front hands it an identity, a terminal size and the client's
//! accepted variables, and gets back a [`Spawned`]: the [`Process`] (exit, limits, process
//! group) together with its async input/output and, for a PTY, its resize handle.
//! Every program is its own session and process-group leader; ending a session signals the whole
//! group (SIGHUP, then SIGKILL after a grace period), so grandchildren do not outlive it.

pub mod account;
pub mod cgroup;
pub mod confine;
pub mod dirs;
pub mod env;
pub mod process;
pub mod reaper;
pub mod sandbox;
pub mod skeleton;
mod termios;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub use account::{Account, AccountError, AccountPolicy};
pub use cgroup::LimitHit;
pub use confine::Confinement;
pub use env::{build_env, SessionEnv};
pub use process::{ExitStatus, Process, ProcessGroup, ProcessIo, Resizer, Spawned};
pub use termios::{ControlChar, ModeFlag, TerminalModes};

use crate::config::{ResourceLimits, SessionConfig, Template};
use crate::identity::Identity;

/// The terminal size in characters (and pixels, when the client knows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// Width in pixels (0 when unknown).
    pub pixel_width: u16,
    /// Height in pixels (0 when unknown).
    pub pixel_height: u16,
}

impl TermSize {
    /// A size from the client's numbers, clamped to what a PTY can hold. A zero means "unknown"
    /// (OpenSSH sends 0x0 when its own input is not a terminal) and becomes 80x24, which
    /// full-screen programs can draw in.
    pub fn clamped(cols: u32, rows: u32, pw: u32, ph: u32) -> TermSize {
        let c = |v: u32, default: u16| match v {
            0 => default,
            v => v.min(u16::MAX as u32) as u16,
        };
        let p = |v: u32| v.min(u16::MAX as u32) as u16;
        TermSize {
            cols: c(cols, 80),
            rows: c(rows, 24),
            pixel_width: p(pw),
            pixel_height: p(ph),
        }
    }
}

impl Default for TermSize {
    fn default() -> Self {
        TermSize {
            cols: 80,
            rows: 24,
            pixel_width: 0,
            pixel_height: 0,
        }
    }
}

/// What to launch, fixed at start from `[session]`.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// argv; the first word is the program.
    pub command: crate::config::Argv,
    /// Extra names that receive the user id.
    pub identity_env: Vec<String>,
    /// `[session.env]`.
    pub env: Vec<(String, Template)>,
    /// Names copied from the gateway's environment.
    pub pass_env: Vec<String>,
    /// Working directory template.
    pub workdir: Option<Template>,
    /// SIGHUP → SIGKILL grace.
    pub kill_grace: Duration,
    /// The gateway's own account (programs run as it unless `accounts` switches).
    pub account: Account,
    /// Which account each user's program runs as.
    pub accounts: AccountPolicy,
    /// Per-session resource limits.
    pub limits: ResourceLimits,
    /// The Landlock sandbox, when programs run in one (see [`sandbox::plan`]).
    pub sandbox: Option<std::sync::Arc<sandbox::Sandbox>>,
    /// `[session] claims_env`: variables from the verified identity.
    pub claims_env: Vec<(String, crate::identity::IdentityField)>,
    /// `[session] home_skeleton`: copied into each user's Hermes home once.
    pub home_skeleton: Option<PathBuf>,
}

impl LaunchSpec {
    /// From the config section, running as the gateway's own account.
    pub fn from_config(cfg: &SessionConfig) -> LaunchSpec {
        LaunchSpec {
            command: cfg.command.clone(),
            identity_env: cfg
                .identity_env
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            env: cfg
                .env
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect(),
            pass_env: cfg.pass_env.iter().map(|n| n.as_str().to_owned()).collect(),
            workdir: cfg.workdir.clone(),
            kill_grace: cfg.kill_grace,
            account: Account::current(),
            accounts: AccountPolicy::from_config(cfg),
            limits: cfg.limits.clone(),
            sandbox: None,
            claims_env: cfg
                .claims_env
                .iter()
                .map(|(k, f)| (k.as_str().to_owned(), *f))
                .collect(),
            home_skeleton: cfg.home_skeleton.clone(),
        }
    }

    /// The account `user`'s programs run as, by name, as configured (`None` when none is
    /// configured for them). Nothing is looked up or created.
    pub fn account_name(&self, user: &crate::identity::UserId) -> Option<String> {
        if self.accounts.switches_users() {
            self.accounts.name_for(user).ok()
        } else {
            Some(self.account.name.clone())
        }
    }

    /// Why the program cannot be started, checked without side effects (no account, no
    /// directories): `None` when it resolves on PATH.
    pub fn program_problem(&self) -> Option<LaunchError> {
        let path = std::env::var("PATH").unwrap_or_else(|_| env::DEFAULT_PATH.into());
        resolve_program(self.command.program(), &path, Path::new(&self.account.home)).err()
    }

    /// Whether a client is barred from setting `name`: identity variables, `[session.env]` names
    /// and the ones the gateway sets itself.
    pub fn is_reserved(&self, name: &str) -> bool {
        const GATEWAY_SET: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM"];
        name == crate::config::IDENTITY_VAR
            || GATEWAY_SET.contains(&name)
            || name.starts_with("HERMES_")
            || name.starts_with("LD_")
            || self.identity_env.iter().any(|n| n == name)
            || self.env.iter().any(|(n, _)| n == name)
            || self.claims_env.iter().any(|(n, _)| n == name)
    }
}

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program is not installed (not found on PATH, or the path does not exist).
    #[error("{program}: not found (searched PATH={path})")]
    NotFound {
        /// argv[0].
        program: String,
        /// The PATH searched.
        path: String,
    },
    /// The file exists but cannot be executed.
    #[error("{program}: not executable ({detail})")]
    NotExecutable {
        /// argv[0] as resolved.
        program: String,
        /// The OS's reason.
        detail: String,
    },
    /// The working directory could not be prepared.
    #[error("working directory {path}: {detail}")]
    Workdir {
        /// The expanded directory.
        path: String,
        /// What failed.
        detail: String,
    },
    /// No usable account for the user (see `[session] run_as`).
    #[error("{0}")]
    Account(#[from] AccountError),
    /// The session's limits could not be set up.
    #[error("setting up this session's resource limits: {0}")]
    Limits(String),
    /// The session's sandbox could not be set up (the program is not started without it).
    #[error("setting up this session's sandbox: {0}")]
    Sandbox(String),
    /// Anything else (PTY allocation, fork).
    #[error("{0}")]
    Other(String),
}

/// A fully prepared launch: account resolved, argv resolved, environment built, directories
/// created, limits ready.
#[derive(Debug)]
pub struct Prepared {
    /// Resolved program path.
    pub program: PathBuf,
    /// argv (argv[0] as configured).
    pub argv: Vec<String>,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// SIGHUP → SIGKILL grace.
    pub kill_grace: Duration,
    /// The account the program runs as.
    pub account: Account,
    /// What the child does to itself before exec.
    pub confinement: Confinement,
}

impl LaunchSpec {
    /// Builds argv, environment and working directory for `identity`. Blocking (password
    /// database, `useradd`, file system).
    pub fn prepare(
        &self,
        identity: &Identity,
        session: &SessionEnv,
        extra_args: &[String],
    ) -> Result<Prepared, LaunchError> {
        let uid = identity.user_id.as_str();
        let switched = self.accounts.switches_users();
        let mut account = if switched {
            self.accounts.resolve(&identity.user_id)?
        } else {
            self.account.clone()
        };
        // The directories that are this user's alone, writable inside the sandbox.
        let mut own: Vec<PathBuf> = Vec::new();
        let mut tmpdir = None;
        if let Some(sb) = &self.sandbox {
            if switched {
                own.push(PathBuf::from(&account.home));
            } else {
                // One account for everyone: its home would be shared, so each user gets one.
                let home = expand_path(&sb.home, uid)?;
                let first = dirs::first_private(&sb.home).unwrap_or(0);
                let tmp = home.join(".tmp");
                dirs::ensure(&tmp, first, &account)?;
                account.home = home.display().to_string();
                tmpdir = Some(tmp);
                own.push(home);
            }
        }
        let mut env = build_env(self, &account, identity, session, |k| std::env::var(k).ok());
        if let Some(tmp) = tmpdir.filter(|_| !env.iter().any(|(k, _)| k == "TMPDIR")) {
            env.push(("TMPDIR".into(), tmp.display().to_string()));
        }
        for (_, t) in self
            .env
            .iter()
            .filter(|(_, t)| dirs::is_user_dir_template(t))
        {
            if let Some(first) = dirs::first_private(t) {
                let dir = expand_path(t, uid)?;
                dirs::ensure(&dir, first, &account)?;
                own.push(dir);
            }
        }
        if let Some(skeleton) = &self.home_skeleton {
            skeleton::apply(skeleton, &env, &account, identity)?;
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let cwd = match &self.workdir {
            Some(t) => {
                let dir = expand_path(t, uid)?;
                match dirs::first_private(t) {
                    // No {user_id}: one directory for everyone. Under the gateway's own account
                    // it is private to that account, as before; with per-user accounts it is
                    // the operator's shared directory and is never handed to one of them.
                    None if self.accounts.switches_users() => std::fs::create_dir_all(&dir)
                        .map_err(|e| LaunchError::Workdir {
                            path: dir.display().to_string(),
                            detail: e.to_string(),
                        })?,
                    None => {
                        let last = dir.components().count().saturating_sub(1);
                        dirs::ensure(&dir, last, &account)?
                    }
                    Some(first) => dirs::ensure(&dir, first, &account)?,
                }
                own.push(dir.clone());
                dir
            }
            // As sshd does: a home that does not exist (nobody's is /nonexistent) means "/".
            None if Path::new(&account.home).is_dir() => PathBuf::from(&account.home),
            None => {
                tracing::debug!(
                    home = account.home,
                    account = account.name,
                    "home directory missing; starting in /"
                );
                PathBuf::from("/")
            }
        };
        let program = resolve_program(self.command.program(), &path_var, &cwd)?;
        let mut argv = self.command.words().to_vec();
        argv.extend(extra_args.iter().cloned());
        let mut confinement = Confinement::prepare(&account, &self.limits)
            .map_err(|e| LaunchError::Limits(e.to_string()))?;
        if let Some(sb) = &self.sandbox {
            confinement.sandbox(sb.clone(), uid, own, &program);
        }
        Ok(Prepared {
            program,
            argv,
            env,
            cwd,
            kill_grace: self.kill_grace,
            account,
            confinement,
        })
    }
}

/// Expands a path template and proves the user id did not add a `..` or a root.
pub fn expand_path(template: &Template, user_id: &str) -> Result<PathBuf, LaunchError> {
    let expanded = PathBuf::from(template.expand(user_id));
    let parents = |p: &Path| {
        p.components()
            .filter(|c| matches!(c, Component::ParentDir))
            .count()
    };
    let raw = Path::new(template.as_str());
    // UserId forbids '/', '.', '..' already; this check makes the guarantee local and visible.
    if parents(&expanded) != parents(raw)
        || expanded.components().count() != raw.components().count()
    {
        return Err(LaunchError::Workdir {
            path: expanded.display().to_string(),
            detail: "the user id would change the path's structure".into(),
        });
    }
    Ok(expanded)
}

/// Finds the program the way execvp would, but reports *why* it failed.
fn resolve_program(program: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, LaunchError> {
    use nix::unistd::{access, AccessFlags};
    let check = |p: &Path| -> Option<Result<PathBuf, LaunchError>> {
        if !p.exists() {
            return None;
        }
        if p.is_dir() {
            return Some(Err(LaunchError::NotExecutable {
                program: p.display().to_string(),
                detail: "it is a directory".into(),
            }));
        }
        Some(match access(p, AccessFlags::X_OK) {
            Ok(()) => Ok(p.to_owned()),
            Err(e) => Err(LaunchError::NotExecutable {
                program: p.display().to_string(),
                detail: e.desc().to_owned(),
            }),
        })
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return check(&p).unwrap_or_else(|| {
            Err(LaunchError::NotFound {
                program: program.into(),
                path: path_var.into(),
            })
        });
    }
    let mut first_err = None;
    for dir in std::env::split_paths(path_var) {
        match check(&dir.join(program)) {
            Some(Ok(p)) => return Ok(p),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    Err(first_err.unwrap_or(LaunchError::NotFound {
        program: program.into(),
        path: path_var.into(),
    }))
}

/// Starts `prepared` in a new PTY of `size`, applying the client's terminal `modes`.
pub async fn spawn_pty(
    prepared: Prepared,
    size: TermSize,
    modes: TerminalModes,
) -> Result<(Spawned, Resizer), LaunchError> {
    process::spawn_pty(prepared, size, modes).await
}

/// Starts `prepared` with pipes for stdin, stdout and stderr (no PTY).
pub fn spawn_pipes(prepared: Prepared) -> Result<Spawned, LaunchError> {
    process::spawn_pipes(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_cannot_escape() {
        let t = Template::try_from("/srv/users/{user_id}/work".to_string()).unwrap();
        assert_eq!(
            expand_path(&t, "alice").unwrap(),
            PathBuf::from("/srv/users/alice/work")
        );
        assert!(expand_path(&t, "..").is_err());
        assert!(expand_path(&t, "a/../../etc").is_err());
    }

    #[test]
    fn program_resolution_reports_why() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().display().to_string();
        match resolve_program("no-such-program-xyz", &path, tmp.path()) {
            Err(LaunchError::NotFound { .. }) => {}
            other => panic!("{other:?}"),
        }
        std::fs::write(tmp.path().join("plain"), "x").unwrap();
        match resolve_program("plain", &path, tmp.path()) {
            Err(LaunchError::NotExecutable { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(resolve_program("sh", "/usr/bin:/bin", tmp.path()).is_ok());
    }
}
