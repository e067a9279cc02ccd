//! The PTY launcher: runs the configured program for an [`Identity`], in a PTY or with pipes.
//!
//! It knows neither SSH nor HTTP: a front hands it an identity, a terminal size and the client's
//! accepted variables, and gets back a [`Process`] with async input/output, resize and exit.
//! Every program is its own session and process-group leader; ending a session signals the whole
//! group (SIGHUP, then SIGKILL after a grace period), so grandchildren do not outlive it.

pub mod env;
pub mod process;
mod termios;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub use env::{build_env, SessionEnv};
pub use process::{ExitStatus, Process, ProcessGroup};
pub use termios::{ControlChar, ModeFlag, TerminalModes};

use crate::config::{SessionConfig, Template};
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

/// The Unix account programs run as (today: the gateway's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

impl Account {
    /// The account the gateway runs as, from the password database (with safe fallbacks).
    pub fn current() -> Account {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => Account {
                name: u.name,
                home: u.dir.display().to_string(),
                shell: u.shell.display().to_string(),
            },
            _ => Account {
                name: uid.to_string(),
                home: "/".into(),
                shell: "/bin/sh".into(),
            },
        }
    }
}

/// What to launch, fixed at start from `[session]`.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// argv; the first word is the program.
    pub command: Vec<String>,
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
    /// The account programs run as.
    pub account: Account,
}

impl LaunchSpec {
    /// From the config section, running as the gateway's own account.
    pub fn from_config(cfg: &SessionConfig) -> LaunchSpec {
        LaunchSpec {
            command: cfg.command.0.clone(),
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
        }
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
    /// Anything else (PTY allocation, fork).
    #[error("{0}")]
    Other(String),
}

/// A fully prepared launch: argv resolved, environment built, directory created.
#[derive(Debug, Clone)]
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
}

impl LaunchSpec {
    /// Builds argv, environment and working directory for `identity`. Blocking (file system).
    pub fn prepare(
        &self,
        identity: &Identity,
        session: &SessionEnv,
        extra_args: &[String],
    ) -> Result<Prepared, LaunchError> {
        let env = build_env(self, &self.account, identity, session, |k| {
            std::env::var(k).ok()
        });
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let cwd = match &self.workdir {
            Some(t) => {
                let dir = expand_path(t, identity.user_id.as_str())?;
                crate::identity::keys::create_private_dir(&dir).map_err(|e| {
                    LaunchError::Workdir {
                        path: dir.display().to_string(),
                        detail: e.to_string(),
                    }
                })?;
                dir
            }
            None => PathBuf::from(&self.account.home),
        };
        let program = resolve_program(&self.command[0], &path_var, &cwd)?;
        let mut argv = self.command.clone();
        argv.extend(extra_args.iter().cloned());
        Ok(Prepared {
            program,
            argv,
            env,
            cwd,
            kill_grace: self.kill_grace,
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
) -> Result<Process, LaunchError> {
    process::spawn_pty(prepared, size, modes).await
}

/// Starts `prepared` with pipes for stdin, stdout and stderr (no PTY).
pub fn spawn_pipes(prepared: Prepared) -> Result<Process, LaunchError> {
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
