//! Which Unix account a user's program runs as.
//!
//! Without `[session] run_as` or `[session.accounts]` every program runs as the gateway's own
//! account. With them, each user gets an account of their own, so one user's program (and every
//! shell command it runs) cannot read another user's files. The rules that keep that safe:
//! - a name made from the template is lower-cased and every character an account name cannot
//!   hold becomes `_`, so the template's prefix always stays in front and no user id can pick a
//!   different account (such as `root`);
//! - uid 0 is never used, whatever the template or map says;
//! - accounts the gateway creates carry a marker with a hash of their user id in the GECOS
//!   field; a template account that carries another user's marker (two ids that sanitize to the
//!   same name) is refused, and so is a template account below uid 1000 that the gateway did not
//!   create (a system account such as `daemon`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest;

use crate::config::{is_account_name, AccountName, AccountTemplate, SessionConfig};
use crate::identity::UserId;

/// The GECOS marker on accounts the gateway created.
const MARKER: &str = "hermes-ssh-gateway user";

/// Lowest uid an account not created by the gateway may have when it comes from the template.
const FIRST_REGULAR_UID: u32 = 1000;

/// A Unix account, resolved from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group the account is in (primary included), for `setgroups`.
    pub groups: Vec<u32>,
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
            Ok(Some(u)) => Account::from_user(u),
            _ => Account {
                name: uid.to_string(),
                uid: uid.as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                groups: Vec::new(),
                home: "/".into(),
                shell: "/bin/sh".into(),
            },
        }
    }

    fn from_user(u: nix::unistd::User) -> Account {
        let groups = std::ffi::CString::new(u.name.as_str())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, u.gid).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|| vec![u.gid.as_raw()]);
        Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            groups,
            home: u.dir.display().to_string(),
            shell: u.shell.display().to_string(),
        }
    }
}

/// Why a user cannot get an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The user id cannot become a valid account name through the template.
    #[error("user {user}: cannot make an account name from run_as: {detail}")]
    BadName {
        /// The user id.
        user: String,
        /// Why.
        detail: BadAccountName,
    },
    /// Neither the map nor a template names an account for the user.
    #[error("user {user}: no account is configured for this user ([session.accounts] has no entry and run_as is unset)")]
    Unmapped {
        /// The user id.
        user: String,
    },
    /// The account does not exist and the gateway may not create it.
    #[error("account {account} (for user {user}) does not exist; create it, or set [session] create_accounts = true")]
    Missing {
        /// The user id.
        user: String,
        /// The account name.
        account: String,
    },
    /// The account is one the gateway will never run a user's program as.
    #[error("account {account} (for user {user}) is refused: {why}")]
    Refused {
        /// The user id.
        user: String,
        /// The account name.
        account: String,
        /// Why.
        why: String,
    },
    /// Creating or looking up the account failed.
    #[error("account {account}: {detail}")]
    System {
        /// The account name.
        account: String,
        /// What failed.
        detail: String,
    },
}

/// How user ids map to accounts, fixed at start from `[session]`.
#[derive(Debug, Clone)]
pub struct AccountPolicy {
    template: Option<AccountTemplate>,
    map: std::collections::BTreeMap<UserId, AccountName>,
    create: bool,
    home_base: PathBuf,
}

/// Serializes `useradd` in this process (it locks /etc/passwd and fails when run twice at
/// once); one lock for every policy, since a reload makes a new one.
static CREATING: Mutex<()> = Mutex::new(());

/// Where an account name came from: the operator's map is trusted more than a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Map,
    Template,
}

impl AccountPolicy {
    /// From `[session]`.
    pub fn from_config(cfg: &SessionConfig) -> AccountPolicy {
        AccountPolicy {
            template: cfg.run_as.clone(),
            map: cfg.accounts.clone(),
            create: cfg.create_accounts,
            home_base: cfg.home_base.clone(),
        }
    }

    /// Whether programs run under per-user accounts (else: the gateway's own).
    pub fn switches_users(&self) -> bool {
        self.template.is_some() || !self.map.is_empty()
    }

    /// The account name for `user`, before any lookup.
    pub fn name_for(&self, user: &UserId) -> Result<String, AccountError> {
        self.name_and_source(user).map(|(n, _)| n)
    }

    fn name_and_source(&self, user: &UserId) -> Result<(String, Source), AccountError> {
        if let Some(name) = self.map.get(user) {
            return Ok((name.as_str().to_owned(), Source::Map));
        }
        let Some(t) = &self.template else {
            return Err(AccountError::Unmapped {
                user: user.to_string(),
            });
        };
        name_from_template(t, user.as_str())
            .map(|n| (n, Source::Template))
            .map_err(|detail| AccountError::BadName {
                user: user.to_string(),
                detail,
            })
    }

    /// The account for `user`, created first when allowed. Blocking (password database,
    /// `useradd`).
    pub fn resolve(&self, user: &UserId) -> Result<Account, AccountError> {
        let (name, source) = self.name_and_source(user)?;
        let found = lookup(&name)?;
        let user_entry = match found {
            Some(u) => u,
            None if self.create => {
                let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
                // Another session may have created it while this one waited.
                match lookup(&name)? {
                    Some(u) => u,
                    None => {
                        let created = self.create_account(&name, user);
                        // Another process (a second gateway on this host) may have created it
                        // between our lookup and useradd: then it exists, and that is fine.
                        match (lookup(&name)?, created) {
                            (Some(u), _) => u,
                            (None, Err(e)) => return Err(e),
                            (None, Ok(())) => {
                                return Err(AccountError::System {
                                    account: name.clone(),
                                    detail: "useradd succeeded but the account cannot be found"
                                        .into(),
                                })
                            }
                        }
                    }
                }
            }
            None => {
                return Err(AccountError::Missing {
                    user: user.to_string(),
                    account: name,
                })
            }
        };
        let refuse = |why: String| AccountError::Refused {
            user: user.to_string(),
            account: name.clone(),
            why,
        };
        let uid = user_entry.uid.as_raw();
        if uid == 0 {
            return Err(refuse("it is uid 0 (root)".into()));
        }
        // A program under the gateway's own account could read its keys and state, signal it
        // and inherit what it holds: never hand that account to a user.
        let gateway = [
            rustix::process::getuid().as_raw(),
            rustix::process::geteuid().as_raw(),
        ];
        if gateway.contains(&uid) {
            return Err(refuse(format!(
                "it is the gateway's own account (uid {uid})"
            )));
        }
        if source == Source::Template {
            let gecos = user_entry.gecos.to_string_lossy().into_owned();
            match gecos.strip_prefix(MARKER) {
                Some(tag) if tag.trim() != marker_tag(user) => {
                    return Err(refuse(
                        "the gateway created it for a different user id (two ids make the same name); map one of them in [session.accounts]".into(),
                    ));
                }
                Some(_) => {}
                None if uid < FIRST_REGULAR_UID => {
                    return Err(refuse(format!(
                        "it is a system account (uid {uid}) the gateway did not create; map it explicitly in [session.accounts] if it is meant for this user"
                    )));
                }
                None => {}
            }
        }
        Ok(Account::from_user(user_entry))
    }

    fn create_account(&self, name: &str, user: &UserId) -> Result<(), AccountError> {
        let home = self.home_base.join(name);
        let shell = ["/usr/sbin/nologin", "/sbin/nologin", "/bin/false"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("/bin/false");
        let comment = format!("{MARKER} {}", marker_tag(user));
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--create-home",
                "--shell",
                shell,
            ])
            .arg("--home-dir")
            .arg(&home)
            .args(["--comment", &comment, "--", name])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .map_err(|e| AccountError::System {
                account: name.into(),
                detail: format!("running useradd: {e}"),
            })?;
        if !out.status.success() {
            return Err(AccountError::System {
                account: name.into(),
                detail: format!(
                    "useradd failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        // useradd's mode comes from login.defs; the home must be private whatever that says.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            AccountError::System {
                account: name.into(),
                detail: format!("chmod 0700 {}: {e}", home.display()),
            }
        })?;
        tracing::info!(account = name, user = %user, home = %home.display(), "created a Unix account");
        Ok(())
    }
}

fn lookup(name: &str) -> Result<Option<nix::unistd::User>, AccountError> {
    nix::unistd::User::from_name(name).map_err(|e| AccountError::System {
        account: name.into(),
        detail: format!("password database lookup: {e}"),
    })
}

/// What the marker holds for `user`: a hash, since a user id may hold characters GECOS cannot.
fn marker_tag(user: &UserId) -> String {
    let h = sha2::Sha256::digest(user.as_str().as_bytes());
    h.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Why a template cannot make an account name for a user id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAccountName {
    /// Longer than account names may be.
    #[error("{name:?} is {} characters long, more than {} allowed; use a shorter run_as or a [session.accounts] entry", name.len(), crate::config::MAX_ACCOUNT_NAME)]
    TooLong {
        /// The name the template made.
        name: String,
    },
    /// Not a name `useradd` accepts.
    #[error("{name:?} is not a valid account name (it must start with a letter or '_')")]
    Invalid {
        /// The name the template made.
        name: String,
    },
}

/// Why this process cannot run programs as other accounts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingPrivilege {
    /// `create_accounts` runs `useradd`.
    #[error("[session] create_accounts needs root (useradd); the gateway runs as uid {uid}")]
    NotRootForUseradd {
        /// The gateway's effective uid.
        uid: u32,
    },
    /// Capabilities that switching accounts needs are missing.
    #[error("[session] run_as / [session.accounts] need root or the capabilities {needed}; the gateway runs as uid {uid} without {missing} (remove run_as to run every program as this account)")]
    Capabilities {
        /// The gateway's effective uid.
        uid: u32,
        /// All that are needed.
        needed: String,
        /// Those it lacks.
        missing: String,
    },
}

/// Expands `template` for `user_id`: lower-cased, and every character an account name cannot
/// hold becomes `_`. Errors say why the result is still not a valid name.
pub fn name_from_template(
    template: &AccountTemplate,
    user_id: &str,
) -> Result<String, BadAccountName> {
    let safe: String = user_id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (before, after) = template.parts();
    let name = format!("{before}{safe}{after}");
    if name.len() > crate::config::MAX_ACCOUNT_NAME {
        return Err(BadAccountName::TooLong { name });
    }
    if !is_account_name(&name) {
        return Err(BadAccountName::Invalid { name });
    }
    Ok(name)
}

/// Whether this process may run programs as other accounts: root, or the capabilities that
/// switching, signalling and per-user directories need (and root for `create_accounts`, which
/// runs `useradd`).
pub fn check_privileges(create_accounts: bool) -> Result<(), MissingPrivilege> {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return Ok(());
    }
    if create_accounts {
        return Err(MissingPrivilege::NotRootForUseradd { uid: euid.as_raw() });
    }
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    // Switching accounts is CAP_SETUID/CAP_SETGID; ending a session signals the user's processes
    // (CAP_KILL); per-user directories are created, chowned, chmodded and walked inside other
    // accounts' private directories (CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE).
    const NEEDED: &[(u32, &str)] = &[
        (0, "CAP_CHOWN"),
        (1, "CAP_DAC_OVERRIDE"),
        (3, "CAP_FOWNER"),
        (5, "CAP_KILL"),
        (6, "CAP_SETGID"),
        (7, "CAP_SETUID"),
    ];
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingPrivilege::Capabilities {
        uid: euid.as_raw(),
        needed: NEEDED
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", "),
        missing: missing.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> AccountTemplate {
        AccountTemplate::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn template_names_keep_the_prefix() {
        let tpl = t("hermes-{user_id}");
        assert_eq!(name_from_template(&tpl, "alice").unwrap(), "hermes-alice");
        assert_eq!(
            name_from_template(&tpl, "Alice@Example.com").unwrap(),
            "hermes-alice_example.com"
        );
        assert_eq!(name_from_template(&tpl, "root").unwrap(), "hermes-root");
        assert_eq!(name_from_template(&tpl, "..root").unwrap(), "hermes-..root");
        assert_eq!(name_from_template(&tpl, "a b:c").unwrap(), "hermes-a_b_c");
        assert!(name_from_template(&tpl, &"x".repeat(40))
            .unwrap_err()
            .to_string()
            .contains("more than 32"));
        // A bare template cannot produce a name starting with a digit.
        assert!(name_from_template(&t("{user_id}"), "1abc")
            .unwrap_err()
            .to_string()
            .contains("must start"));
    }

    #[test]
    fn templates_are_checked_at_load() {
        assert!(AccountTemplate::try_from("hermes".to_string()).is_err());
        assert!(AccountTemplate::try_from("{user_id}-{user_id}".to_string()).is_err());
        assert!(AccountTemplate::try_from("Hermes-{user_id}".to_string()).is_err());
        assert!(AccountTemplate::try_from("h/{user_id}".to_string()).is_err());
        assert!(AccountTemplate::try_from("h_{user_id}".to_string()).is_ok());
    }

    #[test]
    fn uid_zero_is_never_used() {
        let cfg = SessionConfig {
            run_as: Some(t("{user_id}")),
            ..SessionConfig::default()
        };
        let p = AccountPolicy::from_config(&cfg);
        let root = UserId::parse("root").unwrap();
        match p.resolve(&root) {
            Err(AccountError::Refused { why, .. }) => assert!(why.contains("uid 0"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A system account the gateway did not create is refused through the template too.
        let daemon = UserId::parse("daemon").unwrap();
        match p.resolve(&daemon) {
            Err(AccountError::Refused { why, .. }) => assert!(why.contains("system account")),
            other => panic!("{other:?}"),
        }
        // Even the operator's map cannot name root.
        let mut map = std::collections::BTreeMap::new();
        map.insert(
            UserId::parse("alice").unwrap(),
            AccountName::try_from("root".to_string()).unwrap(),
        );
        let p = AccountPolicy::from_config(&SessionConfig {
            accounts: map,
            ..SessionConfig::default()
        });
        assert!(matches!(
            p.resolve(&UserId::parse("alice").unwrap()),
            Err(AccountError::Refused { .. })
        ));
        assert!(matches!(
            p.resolve(&UserId::parse("bob").unwrap()),
            Err(AccountError::Unmapped { .. })
        ));
    }
}
