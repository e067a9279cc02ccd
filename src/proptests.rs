//! Property tests over the parsers that take untrusted or hand-written input: key files, the
//! config loader, ticket tokens and claim mapping. (cargo-fuzz needs a nightly toolchain, which
//! this project's machines do not have; proptest runs on stable inside the normal test command.)

use proptest::prelude::*;

use crate::config::Config;
use crate::identity::claims::ClaimPolicy;
use crate::identity::keys::parse_key_line;
use crate::identity::tickets::{MemoryTicketStore, Purpose, TicketStore};
use crate::identity::UserId;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn key_lines_never_panic(line in ".{0,300}") {
        let _ = parse_key_line(&line);
    }

    #[test]
    fn key_lines_with_key_like_prefixes_never_panic(
        prefix in prop::sample::select(vec!["ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-nistp256 ", "restrict,command=\"x\" ssh-ed25519 ", ""]),
        body in "[A-Za-z0-9+/=]{0,200}",
        tail in ".{0,40}",
    ) {
        let _ = parse_key_line(&format!("{prefix}{body} {tail}"));
    }

    #[test]
    fn config_parsing_never_panics_and_locates_errors(text in ".{0,400}") {
        if let Err(e) = Config::parse(&text, "g.toml") {
            prop_assert!(e.to_string().starts_with("g.toml"));
        }
    }

    #[test]
    fn config_sections_with_random_values_never_panic(
        key in prop::sample::select(vec!["listen", "host_key", "command", "identity_env", "kill_grace", "issuer", "max_connections", "exec", "accept_env"]),
        section in prop::sample::select(vec!["ssh", "session", "oidc", "limits", "web"]),
        value in prop::sample::select(vec!["\"x\"", "1", "[]", "[\"a\"]", "\"10s\"", "true", "\"127.0.0.1:1\"", "-5", "{}"]),
    ) {
        let _ = Config::parse(&format!("[{section}]\n{key} = {value}\n"), "g.toml");
    }

    #[test]
    fn user_ids_that_parse_are_safe_path_components(s in ".{0,140}") {
        if let Ok(id) = UserId::parse(&s) {
            let p = std::path::Path::new("/base").join(id.as_str());
            prop_assert_eq!(p.parent(), Some(std::path::Path::new("/base")));
            prop_assert!(!id.as_str().chars().any(|c| c.is_control() || c == '/'));
        }
    }

    #[test]
    fn claim_mapping_never_panics_and_only_admits_valid_ids(
        sub in proptest::option::of(".{0,60}"),
        email in proptest::option::of("[a-z]{1,8}@[a-z.]{1,12}"),
        verified in proptest::option::of(any::<bool>()),
        groups in proptest::collection::vec("[a-z]{1,6}", 0..4),
        claim in prop::sample::select(vec!["sub", "email", "preferred_username"]),
    ) {
        let mut m = serde_json::Map::new();
        if let Some(s) = &sub { m.insert("sub".into(), s.clone().into()); }
        if let Some(e) = &email { m.insert("email".into(), e.clone().into()); }
        if let Some(v) = verified { m.insert("email_verified".into(), v.into()); }
        m.insert("groups".into(), groups.clone().into());
        let p = ClaimPolicy {
            user_id_claim: claim.into(),
            groups_claim: "groups".into(),
            allowed_email_domains: if claim == "email" { vec!["example.com".into()] } else { vec![] },
            ..Default::default()
        };
        if let Ok(mapped) = p.map(&m) {
            prop_assert!(UserId::parse(mapped.user_id.as_str()).is_ok());
            if claim == "email" {
                prop_assert_eq!(verified, Some(true));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_tokens_never_redeem(token in ".{0,80}") {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = MemoryTicketStore::new();
        let alice = crate::identity::Identity::from_mapped_key(UserId::parse("alice").unwrap(), "x".into());
        let real = rt.block_on(store.mint(&alice, Purpose::Pty, None, std::time::Duration::from_secs(30))).unwrap();
        let real = secrecy::ExposeSecret::expose_secret(&real).to_owned();
        prop_assume!(token != real);
        prop_assert!(rt.block_on(store.consume(&token, Purpose::Pty)).is_err());
        prop_assert!(rt.block_on(store.consume(&real, Purpose::Pty)).is_ok());
    }
}
