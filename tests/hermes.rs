//! The real Hermes TUI (PyPI hermes-agent 0.19.0, installed into target/ by scripts/test.sh)
//! behind the gateway, signed in with the real OpenSSH client.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Hermes' first paint takes 1.3–1.8 s; a loaded 2-core machine needs more.
const T: Duration = Duration::from_secs(60);

fn hermes() -> PathBuf {
    let bin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/hermes-agent-0.19.0/bin/hermes");
    assert!(
        bin.exists(),
        "{} is missing: ./scripts/test.sh installs hermes-agent 0.19.0 there",
        bin.display()
    );
    bin
}

#[test]
fn the_real_hermes_runs_in_the_sandbox_and_its_shell_cannot_read_the_gateways_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    let key = Keypair::new(&d, "alice_key");
    // Alice's own Hermes home (the sandbox's per-user HOME), configured with a model that
    // needs no network, so Hermes reaches its ready screen without asking to be set up.
    let hermes_home = d.join("homes/alice/.hermes");
    std::fs::create_dir_all(&hermes_home).unwrap();
    std::fs::write(
        hermes_home.join("config.yaml"),
        "model:\n  provider: custom\n  default: dummy-model\n  base_url: http://127.0.0.1:9/v1\n",
    )
    .unwrap();
    let session = format!(
        "[session]\ncommand = [\"{}\", \"--tui\"]\n[session.env]\nHERMES_DISABLE_LAZY_INSTALLS = \"1\"\n",
        hermes().display()
    );
    let gw = Gateway::start(&d, &config("", &session));
    gw.set_keys("alice", &key.public_line);
    assert!(gw.wait_log("users=1", T).is_some());
    assert!(gw.log().contains("Landlock sandbox"), "{}", gw.log());

    let mut c = PtyClient::spawn(&gw.pty_args(&key), 120, 40);
    assert!(c.expect_screen("ready", T), "{}", c.screen());
    // Hermes' `!` runs a shell command as the program's account: the gateway's own here.
    // Ink reads a burst as a paste: Enter only once the line is on the screen.
    let run_in_hermes = |c: &mut PtyClient, cmd: &str| {
        c.send(cmd);
        assert!(c.expect_screen(cmd, T), "{}", c.screen());
        c.send("\r");
    };
    run_in_hermes(
        &mut c,
        &format!("!cat {}/gateway.toml; echo STATUS=$((100+$?))", d.display()),
    );
    assert!(c.expect_screen("STATUS=101", T), "{}", c.screen());
    assert!(c.screen().contains("Permission denied"), "{}", c.screen());
    assert!(!c.output().contains("listen = "), "the config was shown");
    // Its own home is writable.
    run_in_hermes(&mut c, "!echo OWN-$((6*7)) > $HOME/t && cat $HOME/t");
    assert!(c.expect_screen("OWN-42", T), "{}", c.screen());
    assert!(d.join("homes/alice/t").exists());
    // Ctrl-D quits Hermes and the connection ends normally.
    c.send("\x04");
    assert_eq!(c.wait(T), Some(0), "{}", c.screen());
}
