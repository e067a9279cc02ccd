//! The key registry: `users_dir/<user-id>.keys` files mapped to user ids, reloaded on change.
//!
//! Each file holds OpenSSH public-key lines (the `authorized_keys` format: comments, blank lines and
//! an options prefix allowed). The file stem is the user id. Loading never fails as a whole: a bad
//! line or file is reported as `file:line: what` and skipped, so one typo never locks out the rest.
//! A key listed for two different users is refused for both, since either mapping could be the
//! wrong one.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ssh_key::authorized_keys::Entry;
use ssh_key::{Algorithm, Fingerprint, HashAlg, PublicKey};
use tokio_util::sync::CancellationToken;

use super::key_options::KeyOptions;
use super::UserId;

/// The file name ending that marks a key file.
pub const KEY_FILE_SUFFIX: &str = ".keys";

/// A problem found while loading key files; the rest still loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    /// The file (and line, when there is one) the problem is in.
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// True when a key was refused for security (a key listed for two users).
    pub security: bool,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// One immutable view of all key files.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    by_fingerprint: HashMap<Fingerprint, (UserId, KeyOptions)>,
    users: BTreeSet<UserId>,
    /// `# name:` and `# email:` lines of each user's file.
    profiles: HashMap<UserId, KeyProfile>,
    /// Everything that was skipped, in file order.
    pub problems: Vec<KeyProblem>,
}

impl KeySnapshot {
    /// Reads every `*.keys` file in `dir`. A missing directory is an empty registry.
    pub fn load(dir: &Path) -> KeySnapshot {
        let mut snap = KeySnapshot::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return snap,
            Err(e) => {
                snap.problem(
                    dir.display().to_string(),
                    format!("cannot list: {e}"),
                    false,
                );
                return snap;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_key_file(p))
            .collect();
        // Sorted so that the order of reports (and of the duplicate check) does not depend on
        // the directory's hash order.
        files.sort();

        // fingerprint -> (user, "file:line", options) of its first listing
        let mut seen: HashMap<Fingerprint, (UserId, String, KeyOptions)> = HashMap::new();
        let mut conflicted: BTreeSet<Fingerprint> = BTreeSet::new();
        for path in files {
            let stem = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(KEY_FILE_SUFFIX))
                .unwrap_or_default();
            let user = match UserId::parse(stem) {
                Ok(u) => u,
                Err(e) => {
                    snap.problem(
                        path.display().to_string(),
                        format!("file skipped: the name is not a valid user id: {e}"),
                        false,
                    );
                    continue;
                }
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    snap.problem(
                        path.display().to_string(),
                        format!("cannot read: {e}"),
                        false,
                    );
                    continue;
                }
            };
            snap.users.insert(user.clone());
            if let Some(profile) = KeyProfile::parse(&text) {
                snap.profiles.insert(user.clone(), profile);
            }
            for (idx, line) in text.lines().enumerate() {
                let location = format!("{}:{}", path.display(), idx + 1);
                let (key, options) = match parse_key_entry(line) {
                    Ok(None) => continue,
                    Ok(Some(k)) => k,
                    Err(msg) => {
                        snap.problem(location, format!("line skipped: {msg}"), false);
                        continue;
                    }
                };
                let fp = key.fingerprint(HashAlg::Sha256);
                match seen.get(&fp) {
                    Some((other, _, _)) if *other == user => {}
                    Some((other, first, _)) => {
                        snap.problem(
                            location,
                            format!(
                                "key {fp} is also listed for user {other:?} at {first}: refused for both users"
                            ),
                            true,
                        );
                        conflicted.insert(fp);
                    }
                    None => {
                        seen.insert(fp, (user.clone(), location, options));
                    }
                }
            }
        }
        for (fp, (user, _, options)) in seen {
            if !conflicted.contains(&fp) {
                snap.by_fingerprint.insert(fp, (user, options));
            }
        }
        snap
    }

    fn problem(&mut self, location: String, message: String, security: bool) {
        self.problems.push(KeyProblem {
            location,
            message,
            security,
        });
    }

    /// The user a key is mapped to.
    pub fn lookup(&self, key: &PublicKey) -> Option<&UserId> {
        self.entry(key).map(|(user, _)| user)
    }

    /// The user a key is mapped to, and what its line's options allow.
    pub fn entry(&self, key: &PublicKey) -> Option<(&UserId, &KeyOptions)> {
        self.by_fingerprint
            .get(&key.fingerprint(HashAlg::Sha256))
            .map(|(u, o)| (u, o))
    }

    /// How many keys are mapped.
    pub fn key_count(&self) -> usize {
        self.by_fingerprint.len()
    }

    /// Whether `user` has a key file (even one whose keys were all skipped).
    pub fn has_user(&self, user: &UserId) -> bool {
        self.users.contains(user)
    }

    /// How many users have a key file.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// What `user`'s key file says about them.
    pub fn profile(&self, user: &UserId) -> Option<&KeyProfile> {
        self.profiles.get(user)
    }
}

/// What a key file says about its user, in comment lines of its own (`# name: Alice Liddell`,
/// `# email: alice@example.com`): the operator vouches for it, as for the keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyProfile {
    /// `# name:`.
    pub name: Option<String>,
    /// `# email:`.
    pub email: Option<String>,
}

impl KeyProfile {
    fn parse(text: &str) -> Option<KeyProfile> {
        let mut p = KeyProfile::default();
        for line in text.lines() {
            let Some(comment) = line.trim().strip_prefix('#') else {
                continue;
            };
            let Some((key, value)) = comment.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() || value.chars().any(char::is_control) {
                continue;
            }
            match key.trim().to_ascii_lowercase().as_str() {
                "name" => p.name = Some(value.to_owned()),
                "email" => p.email = Some(value.to_owned()),
                _ => {}
            }
        }
        (p != KeyProfile::default()).then_some(p)
    }
}

fn is_key_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    // Editors' temporaries (.alice.keys.swp, alice.keys~) do not end in ".keys". A name like
    // "...keys" (user id "..") is considered, and reported as an invalid user id.
    name.ends_with(KEY_FILE_SUFFIX) && p.is_file()
}

/// Parses one line: `Ok(None)` for blank lines and comments.
pub fn parse_key_line(line: &str) -> Result<Option<PublicKey>, String> {
    Ok(parse_key_entry(line)?.map(|(key, _)| key))
}

/// Parses one line with its options prefix: `Ok(None)` for blank lines and comments.
pub fn parse_key_entry(line: &str) -> Result<Option<(PublicKey, KeyOptions)>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let entry: Entry = trimmed
        .parse()
        .map_err(|e| format!("not an OpenSSH public key line ({e})"))?;
    let options = KeyOptions::parse(entry.config_opts())?;
    let key = entry.public_key().clone();
    match key.algorithm() {
        Algorithm::Ed25519
        | Algorithm::Ecdsa { .. }
        | Algorithm::Rsa { .. }
        | Algorithm::SkEd25519
        | Algorithm::SkEcdsaSha2NistP256 => {}
        other => {
            return Err(format!(
                "key type {other} is not accepted (use ed25519, ecdsa, rsa or their security-key forms sk-ssh-ed25519, sk-ecdsa-sha2-nistp256)"
            ))
        }
    }
    if let Algorithm::Rsa { .. } = key.algorithm() {
        if let Some(rsa) = key.key_data().rsa() {
            // Bits of the modulus, without the leading zero byte mpints may carry.
            let n = rsa
                .n()
                .as_positive_bytes()
                .map(|b| b.len() * 8)
                .unwrap_or(0);
            if n < 2048 {
                return Err(format!("RSA key of {n} bits is too short (2048 at least)"));
            }
        }
    }
    Ok(Some((key, options)))
}

/// The live registry: a snapshot swapped whole on reload, so a lookup never sees half a reload.
#[derive(Debug)]
pub struct KeyRegistry {
    dir: PathBuf,
    current: RwLock<Arc<KeySnapshot>>,
}

impl KeyRegistry {
    /// Loads `dir` (creating it, mode 0700, when missing) and logs what was skipped.
    pub fn open(dir: &Path) -> std::io::Result<Arc<KeyRegistry>> {
        if !dir.exists() {
            crate::fsutil::create_private_dir(dir)?;
        }
        let reg = Arc::new(KeyRegistry {
            dir: dir.to_owned(),
            current: RwLock::new(Arc::new(KeySnapshot::default())),
        });
        reg.reload();
        Ok(reg)
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        match self.current.read() {
            Ok(g) => g.clone(),
            // A panic while swapping cannot leave a half-written Arc; the value is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The user a key is mapped to, right now.
    pub fn lookup(&self, key: &PublicKey) -> Option<UserId> {
        self.snapshot().lookup(key).cloned()
    }

    /// What `user`'s key file says about them, right now.
    pub fn profile(&self, user: &UserId) -> Option<KeyProfile> {
        self.snapshot().profile(user).cloned()
    }

    /// The user a key is mapped to and its line's options, right now.
    pub fn entry(&self, key: &PublicKey) -> Option<(UserId, KeyOptions)> {
        self.snapshot()
            .entry(key)
            .map(|(u, o)| (u.clone(), o.clone()))
    }

    /// Re-reads every file and swaps the snapshot in; logs problems and returns the new snapshot.
    pub fn reload(&self) -> Arc<KeySnapshot> {
        let snap = Arc::new(KeySnapshot::load(&self.dir));
        for p in &snap.problems {
            if p.security {
                tracing::error!(target: "hermes_ssh_gateway::keys", "{p}");
            } else {
                tracing::warn!(target: "hermes_ssh_gateway::keys", "{p}");
            }
        }
        tracing::info!(
            dir = %self.dir.display(),
            users = snap.user_count(),
            keys = snap.key_count(),
            problems = snap.problems.len(),
            "key files loaded"
        );
        match self.current.write() {
            Ok(mut g) => *g = snap.clone(),
            Err(poisoned) => *poisoned.into_inner() = snap.clone(),
        }
        snap
    }

    /// Watches the directory and reloads after changes settle, until `shutdown`.
    ///
    /// Any event triggers a full reload (cheap, and it avoids reasoning about partial updates);
    /// events within `settle` of each other are folded into one reload, so an editor's
    /// write-rename-chmod sequence reloads once.
    pub fn watch(
        self: &Arc<Self>,
        settle: Duration,
        shutdown: CancellationToken,
    ) -> notify::Result<()> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Only changes count: our own reads of the files produce access events, and
                // reloading on those would loop forever.
                let changed = matches!(
                    res.map(|e| e.kind),
                    Ok(notify::EventKind::Create(_)
                        | notify::EventKind::Modify(_)
                        | notify::EventKind::Remove(_)
                        | notify::EventKind::Any)
                );
                if changed {
                    // A full channel already means "reload pending": dropping this event loses nothing.
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
        let reg = Arc::clone(self);
        tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            // A safety net under the events (a missed inotify event, a file system without
            // them): the directory's listing is compared now and then, and a change reloads.
            let mut rescan = tokio::time::interval(RESCAN);
            rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seen = listing(&reg.dir);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    got = rx.recv() => {
                        if got.is_none() { break; }
                        tokio::time::sleep(settle).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = rescan.tick() => {
                        let dir = reg.dir.clone();
                        let now = tokio::task::spawn_blocking(move || listing(&dir)).await.unwrap_or_default();
                        if now == seen {
                            continue;
                        }
                        tracing::debug!("key directory changed without an event; reloading");
                    }
                }
                let r = reg.clone();
                // File reads are blocking work; keep them off the async workers.
                let listed = tokio::task::spawn_blocking(move || {
                    let l = listing(&r.dir);
                    r.reload();
                    l
                })
                .await;
                if let Ok(l) = listed {
                    seen = l;
                }
            }
        });
        Ok(())
    }
}

/// How often the key directory's listing is compared when no event came.
const RESCAN: Duration = Duration::from_secs(5);

/// Names, sizes and modification times of the key files: what a reload would see change.
fn listing(dir: &Path) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_key_file(&e.path()))
        .map(|e| {
            let m = e.metadata().ok();
            (
                e.file_name(),
                m.as_ref().map_or(0, |m| m.len()),
                m.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFSbFD1DG8bo/Hawh1SNVeY6owI76Vs5EhEphlT0omwZ one";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIODdtWkLPctRJTpWbIB6sskFEs8qzMmIFUFk9oOS0YPR two";

    fn key(line: &str) -> PublicKey {
        parse_key_line(line).unwrap().unwrap()
    }

    #[test]
    fn parses_lines_with_options_and_comments() {
        assert!(parse_key_line("  # comment").unwrap().is_none());
        assert!(parse_key_line("").unwrap().is_none());
        assert!(parse_key_line(&format!("restrict,no-pty {ED1}"))
            .unwrap()
            .is_some());
        assert!(parse_key_line("ssh-ed25519 AAAAnotbase64!").is_err());
        assert!(parse_key_line("hello world").is_err());
    }

    #[test]
    fn bad_lines_are_reported_and_others_still_work() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alice.keys"),
            format!("# alice\ngarbage here\n{ED1}\n"),
        )
        .unwrap();
        let snap = KeySnapshot::load(dir.path());
        assert_eq!(snap.lookup(&key(ED1)).unwrap().as_str(), "alice");
        assert_eq!(snap.problems.len(), 1);
        assert!(snap.problems[0].location.ends_with("alice.keys:2"));
    }

    #[test]
    fn a_key_of_two_users_is_refused_for_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alice.keys"), format!("{ED1}\n{ED2}\n")).unwrap();
        std::fs::write(dir.path().join("bob.keys"), format!("{ED1}\n")).unwrap();
        let snap = KeySnapshot::load(dir.path());
        assert!(snap.lookup(&key(ED1)).is_none());
        assert_eq!(snap.lookup(&key(ED2)).unwrap().as_str(), "alice");
        assert!(snap
            .problems
            .iter()
            .any(|p| p.security && p.message.contains("alice")));
    }

    #[test]
    fn invalid_file_names_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("-x.keys"), format!("{ED1}\n")).unwrap();
        std::fs::write(dir.path().join("...keys"), format!("{ED2}\n")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), format!("{ED2}\n")).unwrap();
        let snap = KeySnapshot::load(dir.path());
        assert_eq!(snap.key_count(), 0);
        assert_eq!(snap.problems.len(), 2);
    }
}
