//! Private directories and files: what the gateway keeps secret (state, audit log, recordings,
//! the admin socket) must be readable by its own account only, whoever created the path.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Makes sure `dir` is a directory only this account can use: created with mode 0700 when
/// missing; an existing one with looser modes is tightened (and logged); one owned by another
/// account is refused, since its owner could read or replace what the gateway writes there.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_dir(dir),
        Err(e) => Err(e),
        Ok(m) if !m.is_dir() => Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Ok(m) => tighten(dir, &m, 0o700),
    }
}

/// Creates `dir` and its parents, the last one with mode 0700; an existing one is left as it
/// is (for directories that may be shared, such as a log directory).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The same for an existing file (mode 0600); a missing one is left to its creator.
pub fn private_file(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) => tighten(path, &m, 0o600),
    }
}

fn tighten(path: &Path, m: &std::fs::Metadata, most: u32) -> io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to the gateway's account (uid {me}): its owner could read or replace what the gateway keeps there; chown it to the gateway's account or choose another path",
                path.display(),
                m.uid()
            ),
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & !most != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & most))?;
        tracing::warn!(
            path = %path.display(),
            from = format!("{mode:o}"),
            to = format!("{:o}", mode & most),
            "tightened the mode of a private path others could use"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_directories_are_tightened_and_missing_ones_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("state");
        private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let f = d.join("audit.log");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert!(private_dir(&f).is_err(), "a file is not a directory");
    }
}
