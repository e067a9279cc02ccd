//! The binary as an operator meets it: flags, config errors, the host key, the shipped config.

mod common;

use std::process::Command;

use common::*;

#[test]
fn help_documents_every_flag_and_command() {
    let out = run(
        {
            let mut c = Command::new(BIN);
            c.arg("--help");
            c
        },
        T,
    );
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--config",
        "gateway.toml",
        "demo-tui",
        "check-config",
        "--version",
        "serve",
    ] {
        assert!(help.contains(needle), "--help mentions {needle}:\n{help}");
    }
}

fn start_err(config: &str) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut c = Command::new(BIN);
    c.arg("--config").arg(&path);
    let out = run(c, T);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn bad_config_is_refused_at_start_naming_file_line_and_key() {
    let (code, err) = start_err("[ssh]\nlisten = \"127.0.0.1:0\"\nlisen = \"x\"\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gateway.toml:3:1") && err.contains("lisen"),
        "{err}"
    );

    let (code, err) = start_err("[session]\ncommand = \"hermes --tui\"\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gateway.toml:2:") && err.contains("command"),
        "{err}"
    );

    let (code, err) = start_err("[session]\nkill_grace = \"two seconds\"\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gateway.toml:2:") && err.contains("kill_grace"),
        "{err}"
    );

    let (code, err) = start_err("[session]\nidentity_env = [\"HERMES-ID\"]\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("HERMES-ID"), "{err}");

    let (code, err) = start_err("[sesion]\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("sesion"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let mut c = Command::new(BIN);
    c.args(["--config", "/nonexistent/gw.toml"]);
    let out = run(c, T);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/gw.toml"));
}

#[test]
fn host_key_is_generated_once_and_survives_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "k");
    let known_hosts = tmp.path().join("known_hosts");
    let login = |gw: &Gateway, strict: &str| {
        let mut ssh = Command::new("ssh");
        // The first -o for an option wins, so these come before the base arguments.
        ssh.arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg("-o")
            .arg(format!("StrictHostKeyChecking={strict}"))
            // Port 0 gives each run a new port; pin the key under one name instead.
            .args(["-o", "HostKeyAlias=test-gateway"])
            .args(ssh_base_args(gw.port))
            .arg("-i")
            .arg(&key.private)
            .args(["127.0.0.1", "whoami"])
            .env_remove("SSH_AUTH_SOCK");
        run(ssh, T)
    };
    let gw = Gateway::start(tmp.path(), &config("", ""));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    let first = gw.wait_log("host key", T).unwrap();
    assert!(first.contains("generated=true"), "{first}");
    let path = tmp.path().join("keys/host_ed25519");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(login(&gw, "accept-new").status.success());
    assert_eq!(gw.stop().code(), Some(0), "SIGTERM exits 0");

    let gw = Gateway::start(tmp.path(), &config("", ""));
    let second = gw.wait_log("host key", T).unwrap();
    assert!(second.contains("generated=false"), "{second}");
    let fp = |l: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with("fingerprint="))
            .unwrap()
            .to_owned()
    };
    assert_eq!(fp(&first), fp(&second));
    // The client pinned the first key; a strict login after the restart proves it is the same.
    let out = login(&gw, "yes");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_corrupt_host_key_stops_the_gateway_and_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("keys")).unwrap();
    let path = tmp.path().join("keys/host_ed25519");
    std::fs::write(&path, "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n").unwrap();
    std::fs::write(tmp.path().join("gateway.toml"), config("", "")).unwrap();
    let mut c = Command::new(BIN);
    c.arg("--config").arg(tmp.path().join("gateway.toml"));
    let out = run(c, T);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("host_ed25519") && err.contains("not a valid"),
        "{err}"
    );
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("not a key"));
}

#[test]
fn the_shipped_config_runs_as_is() {
    // The repository's own gateway.toml, unchanged, in a fresh directory (as after a clone).
    let tmp = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    std::fs::write(tmp.path().join("gateway.toml"), &shipped).unwrap();
    // The Hermes skeleton it names comes with the clone.
    let skeleton = tmp.path().join("integrations/hermes/skeleton");
    copy_dir(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/integrations/hermes/skeleton"
        )),
        &skeleton,
    );
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(tmp.path().join("gateway.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let host_key = tmp.path().join("keys/host_ed25519");
    let up = eventually(T, || {
        std::net::TcpStream::connect("127.0.0.1:2222").is_ok() && host_key.exists()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "listening on 127.0.0.1:2222 with a generated host key");
    assert!(tmp.path().join("keys/users").is_dir());

    // Without the skeleton it names, it refuses to start and says which path.
    std::fs::remove_dir_all(tmp.path().join("integrations")).unwrap();
    let mut c = Command::new(BIN);
    c.arg("--config").arg(tmp.path().join("gateway.toml"));
    let out = run(c, T);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("home_skeleton")
            && text(&out.stderr).contains("integrations/hermes/skeleton"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_reports_key_file_problems() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("keys/users")).unwrap();
    std::fs::write(tmp.path().join("keys/users/bob.keys"), "nonsense\n").unwrap();
    std::fs::write(tmp.path().join("gateway.toml"), config("", "")).unwrap();
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(tmp.path().join("gateway.toml"))
        .arg("check-config");
    let out = run(c, T);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("bob.keys:1"), "{stdout}");
}

/// The README's per-IdP `gateway.toml` snippets are valid configurations (`check-config`).
#[test]
fn the_readmes_identity_provider_snippets_are_valid_configurations() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Identity providers, one by one")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has the section");
    let snippets: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .collect();
    assert_eq!(
        snippets.len(),
        6,
        "Google, Entra ID, Okta, Keycloak, Authentik, Dex"
    );
    for snippet in snippets {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("gateway.toml"), config("", snippet)).unwrap();
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(tmp.path().join("gateway.toml"))
            .arg("check-config");
        let out = run(c, T);
        assert!(out.status.success(), "{snippet}\n{out:?}");
    }
}
