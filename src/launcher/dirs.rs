//! Per-user directories (the `workdir` template, and `[session.env]` values that are absolute
//! paths with `{user_id}` as a whole component, such as `HERMES_HOME = "/srv/hermes/{user_id}"`).
//!
//! Everything from the `{user_id}` component down is created mode 0700 and owned by the user's
//! account; parents above it are created mode 0711 (others may pass through, not list). An
//! existing per-user directory owned by someone else is refused, never chowned: that is how one
//! user could be handed another's files. Each step opens the directory with `O_NOFOLLOW`
//! relative to its parent, so a planted symlink cannot redirect the walk.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::config::{Template, USER_ID_PLACEHOLDER};

use super::account::Account;
use super::LaunchError;

/// Whether `template` names a per-user directory: an absolute path with `{user_id}` as one
/// whole component.
pub fn is_user_dir_template(template: &Template) -> bool {
    let p = Path::new(template.as_str());
    p.is_absolute()
        && p.components()
            .any(|c| c.as_os_str() == std::ffi::OsStr::new(USER_ID_PLACEHOLDER))
}

/// Creates (or checks) `path`, whose components from index `first_private` on belong to the
/// user. Blocking.
pub fn ensure(path: &Path, first_private: usize, account: &Account) -> Result<(), LaunchError> {
    let fail = |detail: String| LaunchError::Workdir {
        path: path.display().to_string(),
        detail,
    };
    let mut dir: OwnedFd =
        rustix::fs::open("/", OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| fail(format!("opening /: {e}")))?;
    let mut walked = PathBuf::from("/");
    for (i, c) in path.components().enumerate() {
        let Component::Normal(name) = c else {
            continue;
        };
        walked.push(name);
        let private = i >= first_private;
        let mode = if private { 0o700 } else { 0o711 };
        let created = match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(fail(format!("creating {}: {e}", walked.display()))),
        };
        let next = rustix::fs::openat(
            &dir,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            fail(format!(
                "opening {}: {e} (not a plain directory?)",
                walked.display()
            ))
        })?;
        if private {
            own(&next, created, account).map_err(|e| fail(format!("{}: {e}", walked.display())))?;
        }
        dir = next;
    }
    Ok(())
}

fn own(dir: &OwnedFd, created: bool, account: &Account) -> io::Result<()> {
    let st = rustix::fs::fstat(dir)?;
    if created {
        // mkdir's mode passed through the umask; set it exactly.
        rustix::fs::fchmod(dir, Mode::from_raw_mode(0o700))?;
        if st.st_uid != account.uid || st.st_gid != account.gid {
            rustix::fs::fchown(
                dir,
                Some(rustix::fs::Uid::from_raw(account.uid)),
                Some(rustix::fs::Gid::from_raw(account.gid)),
            )?;
        }
        return Ok(());
    }
    if st.st_uid != account.uid {
        tracing::warn!(
            account = account.name,
            owner_uid = st.st_uid,
            "refused: a per-user directory belongs to another account"
        );
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to account {} (uid {}); the gateway never hands one account's directory to another — chown it yourself if that is intended",
                st.st_uid, account.name, account.uid
            ),
        ));
    }
    Ok(())
}

/// The index of the first component that belongs to the user: the `{user_id}` component of the
/// template (the expansion has the same number of components; `expand_path` checks that).
/// `None` when the template has no `{user_id}`.
pub fn first_private(template: &Template) -> Option<usize> {
    Path::new(template.as_str()).components().position(|c| {
        c.as_os_str()
            .to_string_lossy()
            .contains(USER_ID_PLACEHOLDER)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(s: &str) -> Template {
        Template::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn only_whole_component_paths_are_user_dirs() {
        assert!(is_user_dir_template(&tpl("/srv/hermes/{user_id}")));
        assert!(is_user_dir_template(&tpl("/srv/{user_id}/work")));
        assert!(!is_user_dir_template(&tpl("/var/log/{user_id}.log")));
        assert!(!is_user_dir_template(&tpl("user-{user_id}")));
        assert!(!is_user_dir_template(&tpl("/srv/fixed")));
        assert_eq!(first_private(&tpl("/srv/{user_id}/work")), Some(2));
        assert_eq!(first_private(&tpl("/srv/fixed")), None);
    }

    #[test]
    fn creates_private_dirs_and_refuses_foreign_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let me = Account::current();
        let path = tmp.path().join("users").join("alice").join("work");
        let first = path.components().count() - 2;
        ensure(&path, first, &me).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&tmp.path().join("users")), 0o711);
        // Again: existing and ours is fine.
        ensure(&path, first, &me).unwrap();
        // Owned by someone else: refused.
        let other = Account {
            uid: me.uid + 4242,
            ..me.clone()
        };
        let err = ensure(&path, first, &other).unwrap_err().to_string();
        assert!(err.contains("belongs to uid"), "{err}");
        // A symlink in the private part is not followed.
        let link = tmp.path().join("users").join("mallory");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let err = ensure(&link.join("x"), first, &me).unwrap_err().to_string();
        assert!(err.contains("opening"), "{err}");
    }
}
