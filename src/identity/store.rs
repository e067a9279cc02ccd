//! Durable state behind traits: key enrollments (fingerprint → user, with expiry).
//!
//! The embedded implementation keeps a map in memory and persists it as a JSON file under
//! `[state] dir` (written atomically, mode 0600), which is plenty for the few hundred keys of a
//! team; a shared store for several gateway nodes implements the same trait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{AuthMethod, Identity, UserId};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state failed.
    #[error("state {path}: {detail}")]
    Io {
        /// Where.
        path: String,
        /// What.
        detail: String,
    },
}

/// A key bound to a user after a device-flow sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The user the key belongs to.
    pub user_id: UserId,
    /// The IdP that vouched for them.
    pub provider: String,
    /// Email at enrollment time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name at enrollment time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Unix seconds.
    pub enrolled_at: u64,
    /// Unix seconds after which the binding is void.
    pub expires_at: u64,
    /// Unix seconds of the last login with the key (updated at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<u64>,
    /// The IdP's refresh token (`offline_access`), which re-checks the user at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshToken>,
    /// Unix seconds of the IdP's last word on the user (the sign-in, then each re-check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<u64>,
    /// The user's groups as the IdP's last validated token listed them (the sign-in, then
    /// each re-check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A refresh token at rest: stored with the enrollment (mode 0600 file or Redis), never
/// printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// Wraps a token the IdP issued.
    pub fn new(token: String) -> RefreshToken {
        RefreshToken(token)
    }
    /// The token, for the one request that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshToken(…)")
    }
}

impl Enrollment {
    /// A binding for `identity` lasting `ttl` from now.
    pub fn new(identity: &Identity, ttl: Duration) -> Enrollment {
        let now = unix_now();
        Enrollment {
            user_id: identity.user_id.clone(),
            provider: identity.provider.clone(),
            email: identity.email.clone(),
            display_name: identity.display_name.clone(),
            enrolled_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
            last_used: None,
            refresh_token: None,
            checked_at: Some(now),
            groups: identity.groups.clone(),
        }
    }

    /// Whether the IdP should be asked about the user again: there is a refresh token, and its
    /// last word is at least `interval` old.
    pub fn recheck_due(&self, interval: Duration) -> bool {
        self.refresh_token.is_some()
            && unix_now().saturating_sub(self.checked_at.unwrap_or(self.enrolled_at))
                >= interval.as_secs()
    }

    /// Whether a login now should be recorded (the last one is over a minute old).
    pub fn needs_touch(&self) -> bool {
        self.last_used
            .is_none_or(|t| unix_now().saturating_sub(t) >= 60)
    }

    /// Whether it is still valid.
    pub fn is_live(&self) -> bool {
        self.expires_at > unix_now()
    }

    /// The identity a login with this key gets.
    pub fn identity(&self, fingerprint: &str) -> Identity {
        Identity {
            user_id: self.user_id.clone(),
            provider: self.provider.clone(),
            method: AuthMethod::EnrolledKey,
            key_fingerprint: Some(fingerprint.to_owned()),
            email: self.email.clone(),
            display_name: self.display_name.clone(),
            groups: self.groups.clone(),
            certificate: None,
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Key enrollments, keyed by `SHA256:…` fingerprint.
#[async_trait::async_trait]
pub trait EnrollmentStore: Send + Sync {
    /// Binds a key (replacing any earlier binding of the same key).
    async fn bind(&self, fingerprint: &str, enrollment: Enrollment) -> Result<(), StoreError>;
    /// The live binding of a key.
    async fn lookup(&self, fingerprint: &str) -> Result<Option<Enrollment>, StoreError>;
    /// Removes a binding; true when there was one.
    async fn remove(&self, fingerprint: &str) -> Result<bool, StoreError>;
    /// Records a login with a bound key now; a key no longer bound stays unbound (a revocation
    /// racing a login must not be undone).
    async fn touch(&self, fingerprint: &str) -> Result<(), StoreError>;
    /// The live bindings, of `user` only when given, as (fingerprint, binding), oldest first.
    async fn list(&self, user: Option<&UserId>) -> Result<Vec<(String, Enrollment)>, StoreError>;
}

/// The embedded store: memory plus a JSON file.
#[derive(Debug)]
pub struct FileEnrollmentStore {
    path: PathBuf,
    map: Mutex<HashMap<String, Enrollment>>,
}

impl FileEnrollmentStore {
    /// Opens `dir/enrollments.json` (creating `dir` with mode 0700); expired entries are dropped.
    pub fn open(dir: &Path) -> Result<FileEnrollmentStore, StoreError> {
        let path = dir.join("enrollments.json");
        let io = |e: std::io::Error| StoreError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        crate::fsutil::private_dir(dir).map_err(io)?;
        crate::fsutil::private_file(&path).map_err(io)?;
        let mut map: HashMap<String, Enrollment> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
                path: path.display().to_string(),
                detail: format!("not a valid enrollment file ({e}); move it away to start afresh"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(io(e)),
        };
        map.retain(|_, e| e.is_live());
        Ok(FileEnrollmentStore {
            path,
            map: Mutex::new(map),
        })
    }

    /// Writes the whole map: temp file, fsync, rename — a crash leaves the old or the new file.
    fn persist(&self, map: &HashMap<String, Enrollment>) -> Result<(), StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| StoreError::Io {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(map).map_err(|e| StoreError::Io {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    fn with_map<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, Enrollment>) -> (T, bool),
    ) -> Result<T, StoreError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (out, changed) = f(&mut map);
        if changed {
            self.persist(&map)?;
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl EnrollmentStore for FileEnrollmentStore {
    async fn bind(&self, fingerprint: &str, enrollment: Enrollment) -> Result<(), StoreError> {
        self.with_map(|m| {
            m.retain(|_, e| e.is_live());
            m.insert(fingerprint.to_owned(), enrollment);
            ((), true)
        })
    }

    async fn lookup(&self, fingerprint: &str) -> Result<Option<Enrollment>, StoreError> {
        self.with_map(|m| match m.get(fingerprint) {
            Some(e) if e.is_live() => (Some(e.clone()), false),
            Some(_) => {
                m.remove(fingerprint);
                (None, true)
            }
            None => (None, false),
        })
    }

    async fn remove(&self, fingerprint: &str) -> Result<bool, StoreError> {
        self.with_map(|m| {
            let had = m.remove(fingerprint).is_some();
            (had, had)
        })
    }

    async fn touch(&self, fingerprint: &str) -> Result<(), StoreError> {
        self.with_map(|m| match m.get_mut(fingerprint) {
            Some(e) => {
                e.last_used = Some(unix_now());
                ((), true)
            }
            None => ((), false),
        })
    }

    async fn list(&self, user: Option<&UserId>) -> Result<Vec<(String, Enrollment)>, StoreError> {
        let mut out: Vec<(String, Enrollment)> = self.with_map(|m| {
            let live = m
                .iter()
                .filter(|(_, e)| e.is_live() && user.is_none_or(|u| *u == e.user_id))
                .map(|(fp, e)| (fp.clone(), e.clone()))
                .collect();
            (live, false)
        })?;
        out.sort_by_key(|(fp, e)| (e.enrolled_at, fp.clone()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity::from_mapped_key(UserId::parse("alice").unwrap(), "x".into())
    }

    #[tokio::test]
    async fn bindings_survive_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileEnrollmentStore::open(dir.path()).unwrap();
        s.bind(
            "SHA256:a",
            Enrollment::new(&alice(), Duration::from_secs(60)),
        )
        .await
        .unwrap();
        let mut expired = Enrollment::new(&alice(), Duration::ZERO);
        expired.expires_at = unix_now() - 1;
        s.bind("SHA256:old", expired).await.unwrap();
        drop(s);
        let s = FileEnrollmentStore::open(dir.path()).unwrap();
        let e = s.lookup("SHA256:a").await.unwrap().unwrap();
        assert_eq!(e.user_id.as_str(), "alice");
        assert_eq!(e.identity("SHA256:a").method, AuthMethod::EnrolledKey);
        assert!(s.lookup("SHA256:old").await.unwrap().is_none());
        assert!(s.remove("SHA256:a").await.unwrap());
        assert!(!s.remove("SHA256:a").await.unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("enrollments.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
