//! A file the gateway reads again when it changes, as sshd reads `TrustedUserCAKeys` and
//! `RevokedKeys` at every login: an operator who revokes a key or adds a CA expects it to count
//! at the next login, without a reload. A stat per login attempt decides; the file is parsed
//! only when its size, modification time or inode changed.
//!
//! A file that becomes unreadable or invalid fails closed (the caller refuses what depends on
//! it) and the error is logged once per change, naming the file and the line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file that could not be used, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct FileError {
    /// `path` or `path:line`.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl FileError {
    /// A problem at `line` (1-based) of `path`, or in the file as a whole.
    pub fn at(path: &Path, line: Option<usize>, message: String) -> FileError {
        let location = match line {
            Some(n) => format!("{}:{n}", path.display()),
            None => path.display().to_string(),
        };
        FileError { location, message }
    }

    /// The file could not be read.
    pub fn io(path: &Path, e: &std::io::Error) -> FileError {
        FileError::at(path, None, format!("cannot read: {e}"))
    }
}

/// The public keys of a file with one per line (`#` comments and blank lines allowed), each
/// with its line number; a bad line is an error naming `path:line` and, in it, `what` it
/// should have been.
pub fn public_key_lines(
    text: &str,
    path: &Path,
    what: &str,
) -> Result<Vec<(usize, ssh_key::PublicKey)>, FileError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ssh_key::PublicKey::from_openssh(line)
            .map_err(|e| FileError::at(path, Some(n + 1), format!("not {what} line ({e})")))?;
        keys.push((n + 1, key));
    }
    Ok(keys)
}

type Stamp = (u64, i64, i64, u64);

/// The stamp the content was read at, and the content (or why there is none).
type Current<T> = (Option<Stamp>, Result<Arc<T>, FileError>);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// The parsed content of one file, re-read when the file changes.
pub struct Watched<T> {
    path: PathBuf,
    parse: fn(&Path) -> Result<T, FileError>,
    current: Mutex<Current<T>>,
}

impl<T> Watched<T> {
    /// Reads `path` now; an error here is the caller's to report (at startup: a config error).
    pub fn open(path: &Path, parse: fn(&Path) -> Result<T, FileError>) -> Result<Self, FileError> {
        let before = stamp(path);
        let value = parse(path)?;
        Ok(Watched {
            path: path.to_owned(),
            parse,
            current: Mutex::new((before, Ok(Arc::new(value)))),
        })
    }

    /// The file's content as it stands, or why it cannot be used.
    pub fn get(&self) -> Result<Arc<T>, FileError> {
        let now = stamp(&self.path);
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_none() || now != cur.0 {
            let parsed = (self.parse)(&self.path).map(Arc::new);
            // Logged when the verdict changes, not at every login while a file stays broken.
            match (&parsed, &cur.1) {
                (Ok(_), _) => tracing::info!(file = %self.path.display(), "re-read after a change"),
                (Err(e), Err(was)) if e == was => {}
                (Err(e), _) => {
                    tracing::error!(error = %e, "cannot use the changed file; refusing what depends on it until it is fixed")
                }
            }
            // A missing file is checked again at every use (no stamp to compare).
            *cur = (now, parsed);
        }
        cur.1.clone()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_lines(p: &Path) -> Result<usize, FileError> {
        let t = std::fs::read_to_string(p).map_err(|e| FileError::io(p, &e))?;
        if t.contains("bad") {
            return Err(FileError::at(p, Some(2), "bad line".into()));
        }
        Ok(t.lines().count())
    }

    #[test]
    fn rereads_on_change_and_fails_closed_on_a_bad_edit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a\n").unwrap();
        let w = Watched::open(&p, count_lines).unwrap();
        assert_eq!(*w.get().unwrap(), 1);
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(*w.get().unwrap(), 3);
        std::fs::write(&p, "a\nbad\n").unwrap();
        let e = w.get().unwrap_err();
        assert_eq!(e.to_string(), format!("{}:2: bad line", p.display()));
        std::fs::remove_file(&p).unwrap();
        assert!(w.get().is_err());
        std::fs::write(&p, "x\n").unwrap();
        assert_eq!(*w.get().unwrap(), 1);
    }
}
