//! The program's environment, built from scratch.
//!
//! Nothing of the gateway's own environment reaches the program unless it is named: PATH (so the
//! program can be found) and the names in `[session] pass_env`. Identity variables are written
//! last, so neither the config's `[session.env]` nor a client can set or override them.

use crate::config::{is_env_name, IDENTITY_VAR};
use crate::identity::Identity;

use super::{Account, LaunchSpec};

/// PATH used when the gateway itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What varies per session (besides the identity).
#[derive(Debug, Clone, Default)]
pub struct SessionEnv {
    /// The client's terminal type, when it asked for a PTY.
    pub term: Option<String>,
    /// Variables the client asked for, already filtered by the front's accept list.
    pub client: Vec<(String, String)>,
}

/// Builds the environment, in precedence order (later wins): PATH and `pass_env` from
/// `gateway_env`; HOME/USER/LOGNAME/SHELL of the account; TERM; the client's accepted variables;
/// `[session.env]`; the identity variables.
pub fn build_env(
    spec: &LaunchSpec,
    account: &Account,
    identity: &Identity,
    session: &SessionEnv,
    gateway_env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(name, _)| name != k);
        env.push((k.to_owned(), v));
    };
    set(
        "PATH",
        gateway_env("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
    );
    for name in &spec.pass_env {
        if let Some(v) = gateway_env(name) {
            set(name, v);
        }
    }
    set("HOME", account.home.clone());
    set("USER", account.name.clone());
    set("LOGNAME", account.name.clone());
    set("SHELL", account.shell.clone());
    if let Some(term) = &session.term {
        if !term.is_empty() && term.chars().all(|c| c.is_ascii_graphic()) {
            set("TERM", term.clone());
        }
    }
    for (k, v) in &session.client {
        // The front filters already; this is the launcher's own guarantee that a client can only
        // add harmless variables, never identity or gateway-set ones.
        if is_env_name(k) && !v.contains('\0') && !spec.is_reserved(k) {
            set(k, v.clone());
        }
    }
    let uid = identity.user_id.as_str();
    for (k, template) in &spec.env {
        set(k, template.expand(uid));
    }
    // Verified details only, and nothing at all when the identity lacks one: an empty value
    // would read as "known to be empty".
    let mut unknown = Vec::new();
    for (k, field) in &spec.claims_env {
        match identity.field(*field) {
            Some(v) if !v.contains('\0') => set(k, v),
            _ => unknown.push(k),
        }
    }
    set(IDENTITY_VAR, uid.to_owned());
    for name in &spec.identity_env {
        set(name, uid.to_owned());
    }
    env.retain(|(name, _)| !unknown.contains(&name));
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::UserId;

    fn spec(toml: &str) -> LaunchSpec {
        LaunchSpec::from_config(&Config::parse(toml, "t").unwrap().session)
    }

    fn account() -> Account {
        Account {
            name: "svc".into(),
            uid: 999,
            gid: 999,
            groups: vec![999],
            home: "/home/svc".into(),
            shell: "/bin/sh".into(),
        }
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn identity_wins_over_everything_and_secrets_stay_out() {
        let spec = spec(
            "[session]\nidentity_env=[\"HERMES_SESSION_USER_ID\"]\npass_env=[\"LANG\"]\n[session.env]\nHERMES_HOME=\"/srv/h/{user_id}\"\n",
        );
        let id = Identity::from_mapped_key(UserId::parse("alice").unwrap(), "SHA256:x".into());
        let session = SessionEnv {
            term: Some("xterm".into()),
            client: vec![
                ("HERMES_DASHBOARD_USER_ID".into(), "mallory".into()),
                ("HERMES_SESSION_USER_ID".into(), "mallory".into()),
                ("HERMES_HOME".into(), "/tmp".into()),
                ("LC_ALL".into(), "C".into()),
            ],
        };
        let gw = |k: &str| match k {
            "PATH" => Some("/p".to_string()),
            "LANG" => Some("C.UTF-8".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t".to_string()),
            _ => None,
        };
        let env = build_env(&spec, &account(), &id, &session, gw);
        assert_eq!(get(&env, "HERMES_DASHBOARD_USER_ID"), Some("alice"));
        assert_eq!(get(&env, "HERMES_SESSION_USER_ID"), Some("alice"));
        assert_eq!(get(&env, "HERMES_HOME"), Some("/srv/h/alice"));
        assert_eq!(get(&env, "LC_ALL"), Some("C"));
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(get(&env, "PATH"), Some("/p"));
        assert_eq!(get(&env, "TERM"), Some("xterm"));
        assert_eq!(get(&env, "HOME"), Some("/home/svc"));
        assert_eq!(get(&env, "AWS_SECRET_ACCESS_KEY"), None);
        let names: Vec<_> = env.iter().map(|(k, _)| k.as_str()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(names.len(), dedup.len(), "no duplicate names: {names:?}");
    }

    #[test]
    fn claims_reach_the_program_only_from_the_identity() {
        let spec = spec(
            r#"[session]
accept_env=["U_*"]
claims_env={ U_NAME = "name", U_EMAIL = "email", U_GROUPS = "groups" }
"#,
        );
        let mut id = Identity::from_mapped_key(UserId::parse("alice").unwrap(), "SHA256:x".into());
        id.display_name = Some("Alice Liddell".into());
        // A client may not set them, known or not (pass_env or accept_env cannot either).
        let session = SessionEnv {
            term: None,
            client: vec![
                ("U_NAME".into(), "Mallory".into()),
                ("U_EMAIL".into(), "mallory@evil.example".into()),
            ],
        };
        let env = build_env(&spec, &account(), &id, &session, |_| None);
        assert_eq!(get(&env, "U_NAME"), Some("Alice Liddell"));
        assert_eq!(
            get(&env, "U_EMAIL"),
            None,
            "no email known: absent, not the client's"
        );
        assert_eq!(get(&env, "U_GROUPS"), None);
        assert!(spec.is_reserved("U_EMAIL"));
    }
}
