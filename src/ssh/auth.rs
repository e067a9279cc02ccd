//! Per-connection authentication state: the one place that knows who a connection is (its
//! address, the user once accepted). It uses russh's key type only, none of its protocol
//! types, so it can be unit-tested without a connection.
//!
//! russh enforces no ordering between methods, so the connection's state lives here:
//!
//! ```text
//! publickey, key mapped or enrolled ──────────────────────────────► Identity
//! publickey, unknown key, signature valid ─► remembered as *proven*; refused so the client
//!                                            tries its next key (a mapped one still wins)
//! keyboard-interactive (device sign-in on) ─► zero-prompt round ───► Pending { proven key }
//! ```
//! A merely offered key (no signature) is never remembered: public keys are public.
//!
//! Every key also passes the [`KeyPolicy`]: not revoked, a security key's signature shows the
//! user's touch; a certificate is checked against the trusted CAs instead of the key files.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{Certificate, HashAlg, PublicKey};

use crate::identity::key_options::{KeyOptions, KeyRefusal};
use crate::identity::key_policy::{KeyPolicy, SkRequirements};
use crate::identity::limits::{PendingPermit, PendingSlots};
use crate::identity::namespace::Namespaces;
use crate::identity::oidc::Oidc;
use crate::identity::recheck::{recheck, Recheck};
use crate::identity::store::EnrollmentStore;
use crate::identity::{Identity, KeyRegistry, Pending, ProvenKey, UserId};

/// An enrolled key the identity provider's re-check ended during this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Whose key it was.
    pub user: UserId,
    /// Its fingerprint.
    pub key: String,
    /// The provider's answer.
    pub reason: String,
}

/// An authenticated connection: either who it is, or a connection that may only sign in.
#[derive(Debug)]
pub enum Principal {
    /// Authenticated.
    Identity(Identity),
    /// Admitted to sign in with the identity provider, nothing else.
    Pending(Pending),
}

/// What to answer a publickey attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Authentication succeeded with this identity.
    Accept(Identity),
    /// Refused; the reason is for the log only (the client just sees "denied").
    Reject(String),
}

/// What to answer a keyboard-interactive attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum KbdDecision {
    /// Send a zero-prompt round (the client answers at once, TTY or not).
    Prompt,
    /// Accept as pending.
    Accept,
    /// Refuse, with the reason for the log.
    Reject(String),
}

/// The auth state machine of one connection.
pub struct Authenticator {
    registry: Arc<KeyRegistry>,
    enrollments: Arc<dyn EnrollmentStore>,
    /// Present when device sign-in is configured.
    limiter: Option<Arc<dyn PendingSlots>>,
    remote: Option<IpAddr>,
    proven: Option<ProvenKey>,
    /// Unknown keys already proven: offering them again is refused at once, so a client that
    /// re-offers its keys moves on instead of signing the same key twice.
    seen_unknown: HashSet<String>,
    permit: Option<PendingPermit>,
    principal: Option<Principal>,
    /// Why the accepted key may not have a PTY: its line says `no-pty` (or `restrict`), or
    /// its certificate has no `permit-pty`.
    no_pty: Option<&'static str>,
    /// Which ids identity-provider users (and so enrolled keys) may not hold.
    namespaces: Option<Arc<Namespaces>>,
    /// The IdP and the interval for re-checking enrolled keys' users.
    recheck: Option<(Arc<Oidc>, Duration)>,
    /// An enrollment the re-check just ended, for the audit log.
    revoked: Option<Revocation>,
    /// The user a key was accepted for (kept after the principal moves on to the channels).
    user: Option<UserId>,
    /// The same reason, for the sign-in screen that follows.
    revoked_note: Option<String>,
    /// Revocation, certificates, security keys.
    policy: Arc<KeyPolicy>,
    /// The accepted certificate's `force-command`.
    forced_command: Option<String>,
}

impl Authenticator {
    /// A fresh, unauthenticated connection from `remote`.
    pub fn new(
        registry: Arc<KeyRegistry>,
        enrollments: Arc<dyn EnrollmentStore>,
        limiter: Option<Arc<dyn PendingSlots>>,
        remote: Option<IpAddr>,
    ) -> Authenticator {
        Authenticator {
            registry,
            enrollments,
            limiter,
            remote,
            proven: None,
            seen_unknown: HashSet::new(),
            permit: None,
            principal: None,
            no_pty: None,
            namespaces: None,
            recheck: None,
            revoked: None,
            revoked_note: None,
            user: None,
            policy: Arc::new(KeyPolicy::plain()),
            forced_command: None,
        }
    }

    /// Keys and certificates are checked against `policy`.
    pub fn with_policy(mut self, policy: Arc<KeyPolicy>) -> Authenticator {
        self.policy = policy;
        self
    }

    /// The `force-command` of the certificate that signed in, if it had one.
    pub fn forced_command(&self) -> Option<&str> {
        self.forced_command.as_deref()
    }

    /// The connection's address, when it has one.
    pub fn remote(&self) -> Option<IpAddr> {
        self.remote
    }

    /// The user this connection authenticated as, once it has.
    pub fn user(&self) -> Option<&UserId> {
        self.user.as_ref()
    }

    /// Enrolled keys' users are re-checked with `oidc` when the IdP's last word on them is
    /// `interval` old (see `identity::recheck`).
    pub fn with_recheck(mut self, oidc: Arc<Oidc>, interval: Duration) -> Authenticator {
        self.recheck = Some((oidc, interval));
        self
    }

    /// [`Authenticator::with_recheck`] with the context's IdP, when it has one.
    pub fn with_recheck_from(self, ctx: &super::SshContext) -> Authenticator {
        match &ctx.oidc {
            Some(oidc) => self.with_recheck(oidc.clone(), ctx.recheck_interval),
            None => self,
        }
    }

    /// The enrollment a re-check ended during this connection, once: (user, key, reason).
    pub fn take_revoked(&mut self) -> Option<Revocation> {
        self.revoked.take()
    }

    /// Enrolled keys are checked against `namespaces` as the sign-in that bound them was.
    pub fn with_namespaces(mut self, namespaces: Arc<Namespaces>) -> Authenticator {
        self.namespaces = Some(namespaces);
        self
    }

    /// Why the key that signed in may not have a PTY, if it may not.
    pub fn no_pty(&self) -> Option<&'static str> {
        self.no_pty
    }

    fn done(&self) -> bool {
        self.principal.is_some()
    }

    /// Takes the outcome once authentication succeeded.
    pub fn take_principal(&mut self) -> Option<Principal> {
        self.principal.take()
    }

    /// Whether device sign-in is offered.
    pub fn device_enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// Who a key belongs to, with what its key-file line allows (`Err`: a mapped key its own
    /// options refuse now; it is never treated as unknown, so it cannot be enrolled either).
    async fn known(
        &mut self,
        key: &PublicKey,
        fp: &str,
        proven: bool,
    ) -> Result<Option<(Identity, KeyOptions)>, &'static str> {
        if let Some((user, options)) = self.registry.entry(key) {
            return match options.check(self.remote, crate::identity::store::unix_now() as i64) {
                Ok(()) => {
                    let mut id = Identity::from_mapped_key(user, fp.to_owned());
                    if let Some(p) = self.registry.profile(&id.user_id) {
                        id.display_name = p.name;
                        id.email = p.email;
                    }
                    Ok(Some((id, options)))
                }
                Err(KeyRefusal::Address(_)) => {
                    Err("key is not allowed from this address (from= in its key file)")
                }
                Err(KeyRefusal::Expired) => Err("key expired (expiry-time= in its key file)"),
            };
        }
        match self.enrollments.lookup(fp).await {
            Ok(Some(e)) => {
                let id = e.identity(fp);
                if e.needs_touch() {
                    // `keys` shows when a key was last used; off the login's path.
                    let (store, fp) = (self.enrollments.clone(), fp.to_owned());
                    tokio::spawn(async move { store.touch(&fp).await });
                }
                // The operator may have given a key-file user this id since the enrollment.
                if let Some(ns) = &self.namespaces {
                    ns.admit(&id)
                        .map_err(|_| "enrolled for an id that now belongs to a key-file user")?;
                }
                // Only for a key whose possession is proven: an offered public key (which
                // anyone may know) must not make the gateway call the IdP.
                if let Some((oidc, interval)) = self.recheck.as_ref().filter(|_| proven) {
                    match recheck(oidc, &self.enrollments, fp, &e, *interval).await {
                        Recheck::Admit => {}
                        Recheck::Gone => return Ok(None),
                        Recheck::Revoked { reason } => {
                            self.revoked_note = Some(reason.clone());
                            self.revoked = Some(Revocation {
                                user: e.user_id.clone(),
                                key: fp.to_owned(),
                                reason,
                            });
                            return Ok(None);
                        }
                    }
                }
                Ok(Some((id, KeyOptions::default())))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                // Fail closed: an unreadable store admits nobody by enrollment.
                tracing::error!(error = %e, "enrollment lookup failed");
                Ok(None)
            }
        }
    }

    /// A key was offered without a signature: is it worth the client's signing it?
    /// Known keys are; unknown keys are too when device sign-in is on, so that the client
    /// proves possession and the key can be bound after approval.
    /// A certificate is worth signing when it would be accepted.
    pub async fn offered(
        &mut self,
        key: &PublicKey,
        cert: Option<&Certificate>,
        login: &str,
    ) -> Result<(), String> {
        if self.done() {
            return Err("already authenticated".into());
        }
        if let Some(cert) = cert {
            return self.check_certificate(cert, login).map(drop);
        }
        if let Some(refusal) = self.policy.key_refusal(key.key_data()) {
            return Err(refusal);
        }
        let fp = fp(key);
        if self.known(key, &fp, false).await?.is_some() {
            return Ok(());
        }
        if self.seen_unknown.contains(&fp) {
            return Err("key is not mapped to any user (already proven)".into());
        }
        if self.device_enabled() {
            Ok(())
        } else {
            Err("key is not mapped to any user".into())
        }
    }

    fn check_certificate(
        &self,
        cert: &Certificate,
        login: &str,
    ) -> Result<crate::identity::certs::CertGrant, String> {
        let now = crate::identity::store::unix_now();
        self.policy.certificate(cert, login, self.remote, now)
    }

    /// The client proved possession of a certificate's key (`flags`: a security key's
    /// signature flags).
    pub fn verified_certificate(
        &mut self,
        cert: &Certificate,
        flags: Option<u8>,
        login: &str,
    ) -> Decision {
        if self.done() {
            return Decision::Reject("already authenticated".into());
        }
        let grant = match self.check_certificate(cert, login) {
            Ok(g) => g,
            Err(reason) => return Decision::Reject(reason),
        };
        let req = SkRequirements {
            no_touch_required: grant.no_touch_required,
            verify_required: grant.verify_required,
        };
        if let Err(reason) = self.policy.security_key(flags, req) {
            return Decision::Reject(reason.into());
        }
        self.permit = None;
        self.no_pty = grant
            .no_pty
            .then_some("its certificate has no permit-pty extension");
        self.forced_command = grant.forced_command;
        self.user = Some(grant.identity.user_id.clone());
        self.principal = Some(Principal::Identity(grant.identity.clone()));
        Decision::Accept(grant.identity)
    }

    /// The client proved possession of `key` (russh verified the signature; `flags`: a
    /// security key's signature flags).
    pub async fn verified(&mut self, key: &PublicKey, flags: Option<u8>) -> Decision {
        if self.done() {
            return Decision::Reject("already authenticated".into());
        }
        if let Some(refusal) = self.policy.key_refusal(key.key_data()) {
            return Decision::Reject(refusal);
        }
        let fp = fp(key);
        match self.known(key, &fp, true).await {
            Ok(Some((id, options))) => {
                if let Err(reason) = self.policy.security_key(flags, options.sk_requirements()) {
                    return Decision::Reject(reason.into());
                }
                self.permit = None;
                self.no_pty = options
                    .no_pty
                    .then_some("no-pty or restrict in its key file");
                self.user = Some(id.user_id.clone());
                self.principal = Some(Principal::Identity(id.clone()));
                return Decision::Accept(id);
            }
            Err(reason) => return Decision::Reject(reason.into()),
            Ok(None) => {}
        }
        self.seen_unknown.insert(fp.clone());
        if !self.device_enabled() {
            return Decision::Reject("key is not mapped to any user".into());
        }
        // A key bound after sign-in must have been touched when it was proven, as it must
        // be at every later login.
        if let Err(reason) = self.policy.security_key(flags, SkRequirements::default()) {
            return Decision::Reject(reason.into());
        }
        // Only the first proven key is kept: it is the one the client prefers.
        if self.proven.is_none() {
            self.proven = Some(ProvenKey { fingerprint: fp });
        }
        Decision::Reject(
            "key is not mapped to any user (proven; may be enrolled after sign-in)".into(),
        )
    }

    /// keyboard-interactive: `responded` is false for the first request, true for the answer to
    /// our zero-prompt round.
    pub async fn keyboard_interactive(&mut self, responded: bool) -> KbdDecision {
        if self.done() {
            return KbdDecision::Reject("already authenticated".into());
        }
        let Some(limiter) = &self.limiter else {
            return KbdDecision::Reject("device sign-in is not configured".into());
        };
        if !responded {
            if self.permit.is_none() {
                match limiter.acquire(self.remote).await {
                    Ok(p) => self.permit = Some(p),
                    Err(e) => return KbdDecision::Reject(e.to_string()),
                }
            }
            return KbdDecision::Prompt;
        }
        let Some(permit) = self.permit.take() else {
            return KbdDecision::Reject("answer without a question".into());
        };
        self.principal = Some(Principal::Pending(Pending {
            proven_key: self.proven.clone(),
            remote: self.remote,
            permit,
            revoked: self.revoked_note.take(),
        }));
        KbdDecision::Accept
    }
}

/// `SHA256:…` fingerprint of a public key.
pub fn fp(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// `SHA256:…` fingerprint of a key's data (a certificate's key, a CA).
pub fn fp_data(key: &russh::keys::ssh_key::public::KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::store::FileEnrollmentStore;

    fn key(line: &str) -> PublicKey {
        crate::identity::keys::parse_key_line(line)
            .unwrap()
            .unwrap()
    }
    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFSbFD1DG8bo/Hawh1SNVeY6owI76Vs5EhEphlT0omwZ one";
    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIODdtWkLPctRJTpWbIB6sskFEs8qzMmIFUFk9oOS0YPR two";

    fn auth(dir: &std::path::Path, device: bool) -> Authenticator {
        let users = dir.join("users");
        std::fs::create_dir_all(&users).unwrap();
        std::fs::write(users.join("alice.keys"), K2).unwrap();
        let reg = KeyRegistry::open(&users).unwrap();
        let store = Arc::new(FileEnrollmentStore::open(&dir.join("state")).unwrap());
        let limiter = device.then(|| {
            Arc::new(crate::identity::limits::PendingLimiter::new(10, 1)) as Arc<dyn PendingSlots>
        });
        Authenticator::new(reg, store, limiter, Some("127.0.0.1".parse().unwrap()))
    }

    #[tokio::test]
    async fn unknown_key_is_proven_then_pending_and_a_mapped_key_still_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = auth(dir.path(), true);
        assert!(
            a.offered(&key(K1), None, "alice").await.is_ok(),
            "unknown key may sign"
        );
        assert!(matches!(
            a.verified(&key(K1), None).await,
            Decision::Reject(_)
        ));
        assert!(
            a.offered(&key(K1), None, "alice").await.is_err(),
            "not signed twice"
        );
        // The client tries its next key: the mapped one.
        match a.verified(&key(K2), None).await {
            Decision::Accept(id) => assert_eq!(id.user_id.as_str(), "alice"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.take_principal(), Some(Principal::Identity(_))));
    }

    #[tokio::test]
    async fn keyboard_interactive_gives_pending_with_only_the_proven_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = auth(dir.path(), true);
        // Offered but never signed: must not become the proven key.
        assert!(a.offered(&key(K1), None, "alice").await.is_ok());
        assert_eq!(a.keyboard_interactive(false).await, KbdDecision::Prompt);
        assert_eq!(a.keyboard_interactive(true).await, KbdDecision::Accept);
        match a.take_principal() {
            Some(Principal::Pending(p)) => assert!(p.proven_key.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn pending_slots_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = auth(dir.path(), true);
        let mut b = auth(dir.path(), true);
        assert_eq!(a.keyboard_interactive(false).await, KbdDecision::Prompt);
        // Different limiter instance per `auth()`: share one to test the cap.
        let shared: Arc<dyn PendingSlots> =
            Arc::new(crate::identity::limits::PendingLimiter::new(10, 1));
        a.limiter = Some(shared.clone());
        b.limiter = Some(shared);
        a.permit = None;
        assert_eq!(a.keyboard_interactive(false).await, KbdDecision::Prompt);
        assert!(matches!(
            b.keyboard_interactive(false).await,
            KbdDecision::Reject(_)
        ));
    }

    #[tokio::test]
    async fn without_device_sign_in_unknown_keys_are_refused_early() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = auth(dir.path(), false);
        assert!(a.offered(&key(K1), None, "alice").await.is_err());
        assert!(matches!(
            a.keyboard_interactive(false).await,
            KbdDecision::Reject(_)
        ));
    }
}
