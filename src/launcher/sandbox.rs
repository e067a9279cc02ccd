//! The Landlock sandbox every program runs in (`[session] isolation = "landlock"`).
//!
//! When programs share the gateway's account, file modes cannot keep one user's program away
//! from the gateway's secrets or from another user's files: Landlock can. Each session gets its
//! own ruleset, built before the fork and enforced in the child after `no_new_privs`:
//! - the file system is reachable only beneath `[session.sandbox] read` (read, execute) and
//!   `write` (everything), plus the program's own installation, and this user's own
//!   directories (their HOME, working directory and per-user `[session.env]` directories);
//! - with Landlock ABI 6 the session is also scoped: it cannot signal processes outside it, nor
//!   connect to abstract Unix sockets created outside it. Landlock also keeps it from ptracing
//!   (and so from reading `/proc/<pid>/environ` of) any process outside its domain.
//!
//! At start, [`plan`] refuses configurations where an allowed path would reach a protected
//! one (the config, host key, key files, state, audit log, recordings, admin socket).

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI,
};

use crate::config::{Isolation, SessionConfig, Template, USER_ID_PLACEHOLDER};

/// Set (to anything) in the gateway's environment, it makes the gateway behave as on a kernel
/// without Landlock. For tests only: no kernel here lacks it, and this can only make the
/// gateway refuse to start or warn, never weaken a sandbox it would have built.
pub const PRETEND_NO_LANDLOCK: &str = "HERMES_GATEWAY_TEST_NO_LANDLOCK";

/// The file-system rights the sandbox handles (ABI 5 adds device ioctls; the crate drops what
/// an older kernel lacks).
const FS_ABI: ABI = ABI::V5;
/// Signal and abstract-socket scoping arrived with ABI 6.
const SCOPE_ABI: i32 = 6;

/// The running kernel's Landlock ABI version; 0 when it has none (or it is disabled).
pub fn kernel_abi() -> i32 {
    static ABI_VERSION: OnceLock<i32> = OnceLock::new();
    *ABI_VERSION.get_or_init(|| {
        if std::env::var_os(PRETEND_NO_LANDLOCK).is_some() {
            return 0;
        }
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        #[allow(unsafe_code)]
        // SAFETY: the documented version query: no ruleset attribute, size 0, one flag.
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        v.max(0) as i32
    })
}

/// Why the sandbox cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Shared-account mode for several users on a kernel without Landlock.
    #[error("refusing to start: every user's program would run as the gateway's own account ({account}) and this kernel has no Landlock to keep them apart; users could read the gateway's secrets, change each other's keys and signal each other's programs. Use run_as (one account per user), a kernel with Landlock (5.13+, enabled), or set [session] isolation = \"none\" to accept that")]
    NoLandlock {
        /// The gateway's account.
        account: String,
    },
    /// An allowed path reaches a protected one.
    #[error("[session.sandbox] {key} = {path:?} would let programs reach {what} ({protected}); move the gateway's files out of it or allow narrower paths")]
    Overlap {
        /// Which list (`read`, `write`, `home`, or the program's directory).
        key: &'static str,
        /// The allowed path, as configured.
        path: String,
        /// What the protected path is.
        what: &'static str,
        /// The protected path.
        protected: String,
    },
}

/// The sandbox settings the launcher applies to each program.
#[derive(Debug, Clone)]
pub struct Sandbox {
    read: Vec<Template>,
    write: Vec<Template>,
    /// Each user's HOME when programs share the gateway's account.
    pub home: Template,
    scoped: bool,
    protected: Vec<(&'static str, PathBuf)>,
}

/// What [`plan`] decided: the sandbox (if any) and what the operator should be told.
#[derive(Debug, Default)]
pub struct Plan {
    /// `None` when programs run unsandboxed.
    pub sandbox: Option<Sandbox>,
    /// Warnings for the log and `check-config`.
    pub warnings: Vec<String>,
    /// One line describing the isolation in force.
    pub summary: String,
}

/// Decides the isolation for `session`. `protected` lists the gateway's own paths;
/// `multi_user` is whether more than one person can sign in (several key-file users, or an
/// identity provider).
pub fn plan(
    session: &SessionConfig,
    shared_account: Option<&str>,
    protected: Vec<(&'static str, PathBuf)>,
    multi_user: bool,
) -> Result<Plan, SandboxError> {
    let mut warnings = Vec::new();
    if session.isolation == Isolation::None {
        if shared_account.is_some() && multi_user {
            warnings.push("[session] isolation = \"none\": every user's program runs as the gateway's own account without a sandbox; users can read the gateway's configuration and state, each other's files, and signal each other's programs".into());
        }
        return Ok(Plan {
            sandbox: None,
            warnings,
            summary: "programs run without a sandbox (isolation = \"none\")".into(),
        });
    }
    let abi = kernel_abi();
    if abi == 0 {
        match shared_account {
            Some(account) if multi_user => {
                return Err(SandboxError::NoLandlock {
                    account: account.to_owned(),
                })
            }
            Some(_) => warnings.push("this kernel has no Landlock: programs run without a sandbox, which is safe only while one user can sign in (a second key file or [oidc] will make the gateway refuse to start)".into()),
            None => warnings.push("this kernel has no Landlock: users are kept apart by their accounts only (run_as)".into()),
        }
        return Ok(Plan {
            sandbox: None,
            warnings,
            summary: "programs run without a sandbox (no Landlock in this kernel)".into(),
        });
    }
    let protected: Vec<_> = protected
        .into_iter()
        .map(|(what, p)| (what, absolute(&p)))
        .collect();
    let sb = &session.sandbox;
    let mut checks: Vec<(&'static str, &Template)> = sb
        .read
        .iter()
        .map(|t| ("read", t))
        .chain(sb.write.iter().map(|t| ("write", t)))
        .collect();
    if shared_account.is_some() {
        checks.push(("home", &sb.home));
    }
    for (key, t) in checks {
        if let Some((what, p)) = reaches(t, &protected) {
            let err = SandboxError::Overlap {
                key,
                path: t.as_str().to_owned(),
                what,
                protected: p.display().to_string(),
            };
            // With per-user accounts, file modes are the first wall; the sandbox is the second.
            if shared_account.is_some() {
                return Err(err);
            }
            warnings.push(err.to_string());
        }
    }
    let scoped = abi >= SCOPE_ABI;
    if !scoped {
        warnings.push(format!("this kernel's Landlock (ABI {abi}) cannot scope signals and abstract sockets (ABI 6, Linux 6.12): a program could still signal other users' programs of the same account"));
    }
    Ok(Plan {
        sandbox: Some(Sandbox {
            read: sb.read.clone(),
            write: sb.write.clone(),
            home: sb.home.clone(),
            scoped,
            protected,
        }),
        warnings,
        summary: format!(
            "programs run in a Landlock sandbox (ABI {abi}{})",
            if scoped {
                ", signals and abstract sockets scoped"
            } else {
                ""
            }
        ),
    })
}

impl Sandbox {
    /// Builds the ruleset for one session of `user_id`, whose own directories are `own` and
    /// whose program is `program`. Blocking (opens each path). The returned descriptor is
    /// enforced in the child by [`restrict_in_child`].
    pub fn ruleset(&self, user_id: &str, own: &[PathBuf], program: &Path) -> io::Result<OwnedFd> {
        let expand = |ts: &[Template]| -> Vec<PathBuf> {
            ts.iter()
                .filter_map(|t| super::expand_path(t, user_id).ok())
                .collect()
        };
        let read = AccessFs::from_read(FS_ABI);
        let all = AccessFs::from_all(FS_ABI);
        let fail = |e: landlock::RulesetError| io::Error::other(e.to_string());
        let mut ruleset = Ruleset::default().handle_access(all).map_err(fail)?;
        if self.scoped {
            ruleset = ruleset.scope(Scope::from_all(ABI::V6)).map_err(fail)?;
        }
        let created = ruleset
            .create()
            .map_err(fail)?
            .add_rules(path_beneath_rules(expand(&self.read), read))
            .map_err(fail)?
            .add_rules(path_beneath_rules(self.program_paths(program), read))
            .map_err(fail)?
            .add_rules(path_beneath_rules(
                expand(&self.write).into_iter().chain(own.iter().cloned()),
                all,
            ))
            .map_err(fail)?;
        Option::<OwnedFd>::from(created)
            .ok_or_else(|| io::Error::other("the kernel did not create a Landlock ruleset"))
    }

    /// The program's installation: its directory, or the directory above a `bin` (a
    /// virtualenv, a prefix), both as named and with symlinks resolved; the same for a script's
    /// interpreter (a virtualenv's python is often a pyenv or uv one elsewhere). Where such a
    /// directory would reach a protected path, only the file itself.
    fn program_paths(&self, program: &Path) -> Vec<PathBuf> {
        let mut files = vec![program.to_owned()];
        if let Some(interpreter) = interpreter(program) {
            files.push(interpreter);
        }
        let mut out = Vec::new();
        for file in files {
            let real = std::fs::canonicalize(&file).ok();
            for file in std::iter::once(file).chain(real) {
                let Some(dir) = file.parent() else { continue };
                let root = match dir.file_name() {
                    Some(n) if n == "bin" => dir.parent().unwrap_or(dir),
                    _ => dir,
                };
                let root = absolute(root);
                let clash = self
                    .protected
                    .iter()
                    .any(|(_, p)| p.starts_with(&root) || root.starts_with(p));
                out.push(if clash { file } else { root });
            }
        }
        out
    }
}

/// The interpreter a `#!` script names (through `/usr/bin/env NAME`, found on the gateway's
/// PATH).
fn interpreter(program: &Path) -> Option<PathBuf> {
    use std::io::Read as _;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let first = PathBuf::from(words.next()?);
    if first.file_name().is_some_and(|n| n == "env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        let path = std::env::var_os("PATH")?;
        return std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file());
    }
    Some(first)
}

/// Enforces the ruleset `fd` on the calling (child) process. Async-signal-safe: one system
/// call. `no_new_privs` must already be set.
pub fn restrict_in_child(fd: libc::c_int) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: a plain system call on a descriptor the parent prepared.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The protected path (with what it is) that `allowed` would reach, if any. A template with
/// `{user_id}` counts from its fixed part: a user id can be any name, including that of a
/// protected directory beside it.
fn reaches<'a>(
    allowed: &Template,
    protected: &'a [(&'static str, PathBuf)],
) -> Option<(&'static str, &'a PathBuf)> {
    let raw = Path::new(allowed.as_str());
    let fixed: PathBuf = raw
        .components()
        .take_while(|c| c.as_os_str() != USER_ID_PLACEHOLDER)
        .collect();
    let fixed = absolute(&fixed);
    protected
        .iter()
        .find(|(_, p)| p.starts_with(&fixed) || fixed.starts_with(p))
        .map(|(what, p)| (*what, p))
}

/// `p` with symlinks resolved where it exists, else made absolute as written.
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(s: &str) -> Template {
        Template::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn a_user_directory_beside_a_protected_one_is_refused() {
        let protected = vec![("the key files", PathBuf::from("/srv/gw/keys"))];
        // A user named "keys" would get /srv/gw/keys.
        assert!(reaches(&tpl("/srv/gw/{user_id}"), &protected).is_some());
        assert!(reaches(&tpl("/srv/gw/homes/{user_id}"), &protected).is_none());
        assert!(reaches(&tpl("/srv"), &protected).is_some());
        assert!(reaches(&tpl("/srv/gw/keys/sub"), &protected).is_some());
        assert!(reaches(&tpl("/usr"), &protected).is_none());
        // Prefixes are whole components: /srv/gw-other is not /srv/gw.
        assert!(reaches(&tpl("/srv/gw-other"), &protected).is_none());
    }

    #[test]
    fn a_scripts_interpreter_is_part_of_its_installation() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("tool");
        std::fs::write(&script, "#!/opt/venv/bin/python3 -u\nprint()\n").unwrap();
        assert_eq!(
            interpreter(&script),
            Some(PathBuf::from("/opt/venv/bin/python3"))
        );
        std::fs::write(&script, "#!/usr/bin/env -S sh -e\n").unwrap();
        assert!(interpreter(&script).is_some_and(|p| p.ends_with("sh")));
        std::fs::write(&script, "\x7fELF").unwrap();
        assert_eq!(interpreter(&script), None);
        let sandbox = Sandbox {
            read: Vec::new(),
            write: Vec::new(),
            home: tpl("/h/{user_id}"),
            scoped: true,
            protected: vec![("the host key", tmp.path().join("host_ed25519"))],
        };
        // A program beside the gateway's files gets itself, not its directory.
        assert_eq!(sandbox.program_paths(&script)[0], script);
        assert_eq!(
            sandbox.program_paths(Path::new("/opt/venv/bin/hermes"))[0],
            PathBuf::from("/opt/venv")
        );
    }
}
