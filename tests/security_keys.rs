//! FIDO security keys (`sk-ssh-ed25519@openssh.com`, `sk-ecdsa-sha2-nistp256@openssh.com`) in
//! key files, as certificate keys and in enrollment, with the user-presence flag required.
//! The authenticator is software (tests/common/softkey.rs: no hardware here), the client is
//! russh's, the gateway and the test IdP are the real ones.

mod common;

use std::process::Command;

use common::idp::{oidc_section, Idp};
use common::softkey::{exec, login, SoftKey, UP, UV};
use common::*;
use russh::keys::Certificate;

const CONFIG: &str = r#"[session]
command = ["/bin/sh", "-c", "echo ID=$HERMES_DASHBOARD_USER_ID"]
[audit]
path = "audit.log"
"#;

fn whoami(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// The last audit failure for `key`, once written.
fn failure_reason(dir: &std::path::Path, key: &SoftKey) -> String {
    let fp = key
        .public()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let log = audit_when(&dir.join("audit.log"), |l| {
        l.contains("auth_failure") && l.contains(&fp)
    });
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("auth_failure") && l.contains(&fp))
        .unwrap_or_else(|| panic!("no failure for {fp}: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn security_keys_in_key_files_must_be_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = Gateway::start(dir, &config("", CONFIG));
    let mut ed = SoftKey::new(dir, "ed", "ed25519");
    let mut ec = SoftKey::new(dir, "ec", "ecdsa");
    let mut relaxed = SoftKey::new(dir, "relaxed", "ed25519");
    let mut verify = SoftKey::new(dir, "verify", "ed25519");
    gw.set_keys(
        "alice",
        &format!(
            "{}\n{}\nno-touch-required {}\nverify-required {}\n",
            ed.line(),
            ec.line(),
            relaxed.line(),
            verify.line()
        ),
    );
    assert!(gw.wait_log("keys=4", T).is_some(), "{}", gw.log());

    for key in [&mut ed, &mut ec] {
        key.flags = UP;
        let h = login(gw.port, key, None).await.expect("touched: logs in");
        let who = whoami(&exec(&h, "whoami").await);
        assert_eq!(
            (who["user_id"].as_str(), who["method"].as_str()),
            (Some("alice"), Some("key"))
        );
        key.flags = 0;
        assert!(
            login(gw.port, key, None).await.is_err(),
            "not touched: refused"
        );
        assert!(failure_reason(dir, key).contains("user presence"));
    }
    relaxed.flags = 0;
    assert!(
        login(gw.port, &mut relaxed, None).await.is_ok(),
        "no-touch-required"
    );
    verify.flags = UP;
    assert!(
        login(gw.port, &mut verify, None).await.is_err(),
        "verify-required"
    );
    assert!(failure_reason(dir, &verify).contains("user verification"));
    verify.flags = UP | UV;
    assert!(login(gw.port, &mut verify, None).await.is_ok());
}

fn sign(
    dir: &std::path::Path,
    ca: &Keypair,
    public: &std::path::Path,
    args: &[&str],
) -> Certificate {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca.private)
        .args(args)
        .arg(public)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let name = public.file_stem().unwrap().to_string_lossy().into_owned();
    Certificate::read_file(&public.with_file_name(format!("{name}-cert.pub"))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn security_key_certificates_and_host_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Keypair::new(dir, "ca");
    let ssh = format!("trusted_user_ca_keys = \"{}/ca.pub\"", dir.display());
    let gw = Gateway::start(dir, &config(&ssh, CONFIG));

    let mut sk = SoftKey::new(dir, "sk", "ed25519");
    let cert = sign(dir, &ca, &sk.pub_file, &["-I", "sk-cert", "-n", "alice"]);
    sk.flags = UP;
    let h = login(gw.port, &mut sk, Some(&cert)).await.expect("touched");
    let who = whoami(&exec(&h, "whoami").await);
    assert_eq!(who["method"], "certificate");
    assert_eq!(who["certificate"]["key_id"], "sk-cert");
    sk.flags = 0;
    assert!(login(gw.port, &mut sk, Some(&cert)).await.is_err());

    // The certificate's own word: no-touch-required waives presence, verify-required asks
    // for verification.
    let mut ec = SoftKey::new(dir, "ec", "ecdsa");
    let relaxed = sign(
        dir,
        &ca,
        &ec.pub_file,
        &["-I", "nt", "-n", "alice", "-O", "no-touch-required"],
    );
    ec.flags = 0;
    assert!(login(gw.port, &mut ec, Some(&relaxed)).await.is_ok());
    let strict = sign(
        dir,
        &ca,
        &ec.pub_file,
        &["-I", "vr", "-n", "alice", "-O", "verify-required"],
    );
    ec.flags = UP;
    assert!(login(gw.port, &mut ec, Some(&strict)).await.is_err());
    ec.flags = UP | UV;
    assert!(login(gw.port, &mut ec, Some(&strict)).await.is_ok());

    // A host certificate never logs a user in (the OpenSSH client does not even offer one, so
    // this client does).
    let host = Keypair::new(dir, "host");
    let host_pub = host.private.with_extension("pub");
    let hcert = sign(dir, &ca, &host_pub, &["-I", "a-host", "-h", "-n", "alice"]);
    let mut h = common::rawssh::connect(gw.port).await;
    let key = russh::keys::load_secret_key(&host.private, None).unwrap();
    let r = h
        .authenticate_openssh_cert("alice", std::sync::Arc::new(key), hcert)
        .await
        .unwrap();
    assert!(!r.success());
    let log = audit_when(&dir.join("audit.log"), |l| l.contains("a-host"));
    assert!(
        log.contains("a host certificate cannot log in a user"),
        "{log}"
    );
}

/// The sign-in URL from a pending connection's screen (sent as stderr text without a PTY).
async fn sign_in_url(ch: &mut russh::Channel<russh::client::Msg>) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let msg = tokio::time::timeout_at(deadline, ch.wait())
            .await
            .expect("the sign-in screen arrives")
            .expect("channel open");
        if let russh::ChannelMsg::ExtendedData { data, .. } | russh::ChannelMsg::Data { data } = msg
        {
            seen.extend_from_slice(&data);
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(url) = text.split_whitespace().find(|w| w.contains("user_code=")) {
            return url.trim_matches(|c: char| !c.is_ascii_graphic()).to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_touched_security_key_is_enrolled_and_must_be_touched_afterwards() {
    let idp = tokio::task::spawn_blocking(|| Idp::start(&[]))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = Gateway::start(
        dir,
        &config(
            "",
            &format!(
                "{CONFIG}{}",
                oidc_section(&idp.issuer, "enroll_ttl = \"1h\"")
            ),
        ),
    );
    let mut sk = SoftKey::new(dir, "sk", "ed25519");
    sk.flags = UP;
    // Unknown key, proven (and refused), then admitted to sign in.
    let mut h = common::rawssh::connect(gw.port).await;
    let public = sk.public().clone();
    let r = h
        .authenticate_publickey_with("tester", public, None, &mut sk)
        .await
        .unwrap();
    assert!(!r.success());
    let mut r = h
        .authenticate_keyboard_interactive_start("tester", None)
        .await
        .unwrap();
    while let russh::client::KeyboardInteractiveAuthResponse::InfoRequest { .. } = r {
        r = h
            .authenticate_keyboard_interactive_respond(Vec::new())
            .await
            .unwrap();
    }
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_shell(true).await.unwrap();
    let url = sign_in_url(&mut ch).await;
    let issuer = idp.issuer.clone();
    let idp = tokio::task::spawn_blocking(move || {
        idp.approve(&url, "alice");
        idp
    })
    .await
    .unwrap();
    assert!(gw.wait_log("key enrolled", T).is_some(), "{}", gw.log());
    drop(ch);

    let h = login(gw.port, &mut sk, None)
        .await
        .expect("enrolled, touched");
    let who = whoami(&exec(&h, "whoami").await);
    assert_eq!(who["method"], "enrolled-key");
    assert_eq!(who["provider"], issuer);
    sk.flags = 0;
    assert!(
        login(gw.port, &mut sk, None).await.is_err(),
        "enrolled, not touched"
    );
    assert!(failure_reason(dir, &sk).contains("user presence"));
    drop(idp);
}
