//! `[session] home_skeleton`: a directory copied into each user's Hermes home on their first
//! session, so that every user starts with the identity plugin enabled and their own settings.
//!
//! The target is the program's `HERMES_HOME`, or `$HOME/.hermes` (Hermes' default) when it has
//! none. Files ending in `.tmpl` lose that suffix and have `{user_id}`, `{name}` and `{email}`
//! replaced (JSON-escaped in `.json.tmpl` files). A file that exists is never overwritten, and a
//! marker file records that the skeleton was applied, so a file the user deletes stays deleted.
//! Every step opens the next component with `O_NOFOLLOW` relative to its parent, so a symlink
//! the user planted cannot send a copy elsewhere; what is created belongs to the user's account.

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::identity::{Identity, IdentityField};

use super::account::Account;
use super::LaunchError;

/// Written last into the target: its presence means "already applied".
pub const MARKER: &str = ".hermes-ssh-gateway-skeleton";

/// Why `skeleton` cannot serve as `[session] home_skeleton`, if it cannot.
pub fn problem(skeleton: &Path) -> Option<String> {
    match std::fs::read_dir(skeleton) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "[session] home_skeleton {}: {e} (it must be a readable directory)",
            skeleton.display()
        )),
    }
}

/// Copies `skeleton` into the user's Hermes home, found in `env`, unless done before. Blocking.
pub fn apply(
    skeleton: &Path,
    env: &[(String, String)],
    account: &Account,
    identity: &Identity,
) -> Result<(), LaunchError> {
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let target = match (var("HERMES_HOME"), var("HOME")) {
        (Some(h), _) => PathBuf::from(h),
        (None, Some(home)) => Path::new(home).join(".hermes"),
        (None, None) => return Ok(()),
    };
    let fail = |detail: String| LaunchError::Workdir {
        path: target.display().to_string(),
        detail: format!("applying [session] home_skeleton: {detail}"),
    };
    if !target.is_absolute() {
        return Err(fail("the Hermes home is not an absolute path".into()));
    }
    let last = target.components().count().saturating_sub(1);
    super::dirs::ensure(&target, last, account)?;
    let dir = open_dir(None, &target).map_err(|e| fail(e.to_string()))?;
    if rustix::fs::statat(&dir, MARKER, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        return Ok(());
    }
    let values = Values::of(identity);
    copy_tree(skeleton, &dir, account, &values).map_err(|e| fail(e.to_string()))?;
    write_new(&dir, MARKER, b"", 0o600, account).map_err(|e| fail(e.to_string()))?;
    tracing::info!(user = %identity.user_id, target = %target.display(), "home skeleton applied");
    Ok(())
}

/// What `.tmpl` files may contain.
struct Values {
    pairs: Vec<(&'static str, String)>,
}

impl Values {
    fn of(identity: &Identity) -> Values {
        let field = |f| identity.field(f).unwrap_or_default();
        Values {
            pairs: vec![
                ("{user_id}", identity.user_id.to_string()),
                ("{name}", field(IdentityField::Name)),
                ("{email}", field(IdentityField::Email)),
            ],
        }
    }

    fn fill(&self, text: &str, json: bool) -> String {
        let mut out = text.to_owned();
        for (placeholder, value) in &self.pairs {
            let value = if json {
                // Inside a JSON string: a quote in a display name must not end it.
                let quoted = serde_json::to_string(value).unwrap_or_default();
                quoted[1..quoted.len() - 1].to_owned()
            } else {
                value.clone()
            };
            out = out.replace(placeholder, &value);
        }
        out
    }
}

fn copy_tree(from: &Path, to: &OwnedFd, account: &Account, values: &Values) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            match rustix::fs::mkdirat(to, name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {
                    let sub = open_dir(Some(to), Path::new(name))?;
                    rustix::fs::fchown(&sub, Some(uid(account)), Some(gid(account)))?;
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let sub = open_dir(Some(to), Path::new(name))?;
            copy_tree(&entry.path(), &sub, account, values)?;
        } else if kind.is_file() {
            let content = std::fs::read(entry.path())?;
            let (name, content) = match name.strip_suffix(".tmpl") {
                Some(plain) => {
                    let text = String::from_utf8_lossy(&content);
                    (
                        plain,
                        values.fill(&text, plain.ends_with(".json")).into_bytes(),
                    )
                }
                None => (name, content),
            };
            use std::os::unix::fs::PermissionsExt as _;
            let mode = if entry.metadata()?.permissions().mode() & 0o111 != 0 {
                0o700
            } else {
                0o600
            };
            write_new(to, name, &content, mode, account)?;
        }
        // Symlinks and special files in the skeleton are not copied.
    }
    Ok(())
}

/// Creates `name` in `dir` with `content`, unless something by that name exists.
fn write_new(
    dir: &OwnedFd,
    name: &str,
    content: &[u8],
    mode: u32,
    account: &Account,
) -> std::io::Result<()> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::EXIST) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    rustix::fs::fchown(&fd, Some(uid(account)), Some(gid(account)))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    std::fs::File::from(fd).write_all(content)
}

/// Opens a directory without following a symlink at its last component (`parent`: relative
/// to that directory, else an absolute path whose parents were just checked by `dirs::ensure`).
fn open_dir(parent: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(match parent {
        Some(p) => rustix::fs::openat(p, path, flags, Mode::empty())?,
        None => rustix::fs::open(path, flags, Mode::empty())?,
    })
}

fn uid(a: &Account) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(a.uid)
}

fn gid(a: &Account) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(a.gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_json_stays_json() {
        let v = Values {
            pairs: vec![
                ("{user_id}", "alice".into()),
                ("{name}", "Al \"the\" Ice".into()),
                ("{email}", String::new()),
            ],
        };
        assert_eq!(v.fill("peer {user_id} <{email}>", false), "peer alice <>");
        let json = v.fill("{\"peerName\": \"{user_id}\", \"n\": \"{name}\"}", true);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["n"], "Al \"the\" Ice");
    }
}
