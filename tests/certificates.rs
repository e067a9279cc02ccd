//! OpenSSH user certificates end to end: real certificates signed by `ssh-keygen -s`, real
//! KRLs made by `ssh-keygen -k`, the real OpenSSH client (key files, `CertificateFile`, an
//! agent), the gateway's audit log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The program prints who it runs for and whether it has a terminal.
const PROGRAM: &str = r#"[session]
command = ["/bin/sh", "-c", "echo ID=$HERMES_DASHBOARD_USER_ID; if [ -t 0 ]; then echo TTY; else echo NOTTY; fi"]
[audit]
path = "audit.log"
"#;

struct Ca {
    key: Keypair,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        Ca {
            key: Keypair::new(dir, name),
        }
    }

    /// Signs `key`'s public key with `args` (`-I`, `-n`, `-V`, `-z`, `-O` …); the certificate
    /// lands next to the key as `<key>-cert.pub`, where `ssh -i` finds it.
    fn sign(&self, key: &Keypair, args: &[&str]) -> PathBuf {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&self.key.private)
            .args(args)
            .arg(key.private.with_extension("pub"))
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen -s {args:?}");
        cert_path(key)
    }

    fn public(&self) -> PathBuf {
        self.key.private.with_extension("pub")
    }
}

fn cert_path(key: &Keypair) -> PathBuf {
    let mut p = key.private.clone().into_os_string();
    p.push("-cert.pub");
    PathBuf::from(p)
}

struct Setup {
    tmp: tempfile::TempDir,
    gw: Gateway,
    ca: Ca,
}

impl Setup {
    fn audit(&self) -> PathBuf {
        self.tmp.path().join("audit.log")
    }

    fn login(&self, key: &Keypair, extra: &[&str]) -> Output {
        self.run(key, extra, &[])
    }

    fn run(&self, key: &Keypair, opts: &[&str], command: &[&str]) -> Output {
        let mut ssh = self.gw.ssh(key);
        ssh.args(opts).arg("127.0.0.1").args(command);
        run(ssh, T)
    }

    /// A fresh key with a certificate signed by the trusted CA with `args`.
    fn key_with_cert(&self, name: &str, args: &[&str]) -> Keypair {
        let key = Keypair::new(self.tmp.path(), name);
        self.ca.sign(&key, args);
        key
    }

    /// As the OpenSSH user `login` (the login name the client sends).
    fn login_as(&self, key: &Keypair, login: &str) -> Output {
        let mut ssh = Command::new("ssh");
        let mut args = ssh_base_args(self.gw.port);
        let pos = args.iter().position(|a| a == "User=tester").unwrap();
        args[pos] = format!("User={login}");
        ssh.args(args)
            .arg("-i")
            .arg(&key.private)
            .args(["-T", "127.0.0.1"])
            .env_remove("SSH_AUTH_SOCK")
            .stdin(std::process::Stdio::null());
        run(ssh, T)
    }

    /// Waits for the audit record of `key`'s certificate attempt and returns it (the client
    /// then offers the plain key too; that record says `"method":"key"`).
    fn audit_of(&self, key: &Keypair, event: &str) -> serde_json::Value {
        let fp = key.fingerprint();
        let hit = |l: &str| {
            l.contains(event) && l.contains(&fp) && l.contains("\"method\":\"certificate\"")
        };
        let log = audit_when(&self.audit(), hit);
        let line = log
            .lines()
            .rev()
            .find(|l| hit(l))
            .unwrap_or_else(|| panic!("no {event} record for {fp}; audit:\n{log}"));
        serde_json::from_str(line).unwrap()
    }
}

fn setup(ssh_extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "user_ca");
    let ssh = format!(
        "trusted_user_ca_keys = {:?}\n{ssh_extra}",
        ca.public().display().to_string()
    );
    let gw = Gateway::start(tmp.path(), &config(&ssh, PROGRAM));
    Setup { tmp, gw, ca }
}

/// `ssh-keygen` with `args` (split at spaces) in `dir`.
fn ssh_keygen(args: &str, dir: &Path) {
    let st = Command::new("ssh-keygen")
        .args(args.split(' '))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen {args:?}");
}

#[test]
fn a_certificate_of_a_trusted_ca_logs_in_as_its_principal() {
    let s = setup("");
    let key = s.key_with_cert(
        "alice_key",
        &[
            "-I",
            "alice@laptop",
            "-n",
            "alice",
            "-V",
            "-5m:+1h",
            "-z",
            "41",
        ],
    );
    let out = s.login(&key, &["-T"]);
    assert!(
        text(&out.stdout).contains("ID=alice"),
        "{out:?}\n{}",
        s.gw.log()
    );

    // whoami names the method, the CA, the serial and the key id.
    let out = s.run(&key, &[], &["whoami"]);
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).expect("whoami JSON");
    assert_eq!(who["user_id"], "alice");
    assert_eq!(who["method"], "certificate");
    assert_eq!(who["certificate"]["serial"], 41);
    assert_eq!(who["certificate"]["key_id"], "alice@laptop");
    assert_eq!(who["certificate"]["ca"], s.ca.key.fingerprint());

    let rec = s.audit_of(&key, "auth_success");
    assert_eq!(rec["method"], "certificate");
    assert_eq!(rec["user_id"], "alice");
    assert_eq!(rec["certificate"]["ca"], s.ca.key.fingerprint());
    assert_eq!(rec["certificate"]["serial"], 41);
    assert_eq!(rec["certificate"]["key_id"], "alice@laptop");
    assert_eq!(rec["certificate"]["principal"], "alice");

    // Several principals: the login name picks one of them, else the first is the user id.
    let multi = s.key_with_cert("multi_key", &["-I", "ops", "-n", "bob,carol"]);
    let out = s.login(&multi, &["-T"]);
    assert!(text(&out.stdout).contains("ID=bob"), "{out:?}");
    let out = s.login_as(&multi, "carol");
    assert!(text(&out.stdout).contains("ID=carol"), "{out:?}");

    // CertificateFile elsewhere than next to the key.
    let moved = s.tmp.path().join("elsewhere-cert.pub");
    std::fs::rename(cert_path(&key), &moved).unwrap();
    let out = s.login(&key, &["-T"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "without its certificate the key is unknown"
    );
    let cf = format!("CertificateFile={}", moved.display());
    let out = s.login(&key, &["-T", "-o", &cf]);
    assert!(text(&out.stdout).contains("ID=alice"), "{out:?}");
}

#[test]
fn a_certificate_in_an_agent_logs_in() {
    let s = setup("");
    let key = s.key_with_cert("agent_key", &["-I", "agent", "-n", "alice"]);
    let sock = s.tmp.path().join("agent.sock");
    let agent = Agent::start(&sock);
    // ssh-add loads the key and the certificate next to it.
    let st = Command::new("ssh-add")
        .arg(&key.private)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    // Only the agent: no key file is given, and the cert file is gone from disk.
    std::fs::remove_file(cert_path(&key)).unwrap();
    let mut ssh = Command::new("ssh");
    let mut args = ssh_base_args(s.gw.port);
    let pos = args.iter().position(|a| a == "IdentitiesOnly=yes").unwrap();
    args[pos] = "IdentitiesOnly=no".into();
    ssh.args(args)
        .args(["-o", "IdentityFile=/nonexistent", "-T", "127.0.0.1"])
        .env("SSH_AUTH_SOCK", &sock)
        .stdin(std::process::Stdio::null());
    let out = run(ssh, T);
    drop(agent);
    assert!(
        text(&out.stdout).contains("ID=alice"),
        "{out:?}\n{}",
        s.gw.log()
    );
    assert_eq!(s.audit_of(&key, "auth_success")["method"], "certificate");
}

#[test]
fn certificates_are_refused_as_sshd_refuses_them() {
    let s = setup("cert_leeway = \"60s\"\n[ssh.cert_principal_map]\nstrip_prefix = \"hermes:\"");
    let other_ca = Ca::new(s.tmp.path(), "other_ca");
    let p = "hermes:alice";
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "expired",
            &["-n", p, "-V", "-2d:-1d"],
            "certificate expired",
        ),
        ("not_yet", &["-n", p, "-V", "+1d:+2d"], "not yet valid"),
        ("no_principal", &["-n", "alice,hermes:../x"], "no principal"),
        (
            "source",
            &["-n", p, "-O", "source-address=10.0.0.0/8,192.168.0.1"],
            "not valid from 127.0.0.1",
        ),
        (
            "critical",
            &["-n", p, "-O", "critical:made-up-option=1"],
            "unknown critical option",
        ),
    ];
    for (name, args, reason) in cases {
        let key = s.key_with_cert(name, &[&["-I", name], *args].concat());
        let out = s.login(&key, &["-T"]);
        assert_eq!(
            out.status.code(),
            Some(255),
            "{name} must not log in: {out:?}"
        );
        let rec = s.audit_of(&key, "auth_failure");
        assert_eq!(rec["method"], "certificate", "{name}: {rec}");
        assert_eq!(rec["certificate"]["key_id"], *name, "{name}: {rec}");
        let why = rec["reason"].as_str().unwrap();
        assert!(
            why.contains(reason),
            "{name}: {why:?} should say {reason:?}"
        );
    }

    // Signed by a CA the gateway does not trust.
    let key = Keypair::new(s.tmp.path(), "wrong_ca");
    other_ca.sign(&key, &["-I", "wrong", "-n", p]);
    let out = s.login(&key, &["-T"]);
    assert_eq!(out.status.code(), Some(255));
    let rec = s.audit_of(&key, "auth_failure");
    assert!(
        rec["reason"].as_str().unwrap().contains("untrusted CA"),
        "{rec}"
    );
    assert_eq!(rec["certificate"]["ca"], other_ca.key.fingerprint());

    // The leeway: expired 30 s ago still logs in with 60 s allowed; the mapped principal
    // ("hermes:" stripped) is the user id.
    let key = s.key_with_cert("skewed", &["-I", "skewed", "-n", p, "-V", "-10m:-30s"]);
    let out = s.login(&key, &["-T"]);
    assert!(text(&out.stdout).contains("ID=alice"), "{out:?}");
}

#[test]
fn no_permit_pty_means_no_terminal_and_force_command_is_refused_with_a_line() {
    let s = setup("");
    // From a terminal, as a person connects (an explicit -t makes OpenSSH give up instead).
    let key = s.key_with_cert("nopty", &["-I", "nopty", "-n", "alice", "-O", "no-pty"]);
    let c = PtyClient::spawn(&s.gw.pty_args(&key), 80, 24);
    assert!(c.expect("TTY", T), "{}", c.output());
    let out = c.output();
    assert!(out.contains("ID=alice") && out.contains("NOTTY"), "{out}");
    assert!(out.contains("PTY allocation request failed"), "{out}");
    let full = s.key_with_cert("withpty", &["-I", "withpty", "-n", "alice"]);
    let c = PtyClient::spawn(&s.gw.pty_args(&full), 80, 24);
    assert!(c.expect("TTY", T), "{}", c.output());
    assert!(!c.output().contains("NOTTY"), "{}", c.output());
    let out = s.run(&key, &[], &["link"]);
    assert!(
        text(&out.stderr).contains("its certificate has no permit-pty"),
        "{out:?}"
    );

    let forced = s.key_with_cert(
        "forced",
        &[
            "-I",
            "forced",
            "-n",
            "alice",
            "-O",
            "force-command=/usr/bin/id",
        ],
    );
    let out = s.login(&forced, &["-T"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        !text(&out.stdout).contains("ID="),
        "the program did not run: {out:?}"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("forces the command \"/usr/bin/id\"")
            && err.contains("runs only its own program"),
        "{err}"
    );
    let log = audit_when(&s.audit(), |l| l.contains("force-command"));
    assert!(log.contains("\"event\":\"refused\""), "{log}");
}

#[test]
fn revoked_keys_refuse_certificates_by_serial_key_id_and_key_and_plain_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new(dir, "user_ca");
    let krl = dir.join("revoked.krl");
    std::fs::write(dir.join("spec"), "serial: 7\nserial: 20-30\n").unwrap();
    ssh_keygen("-q -k -f revoked.krl -s user_ca.pub spec", dir);
    let ssh = format!(
        "trusted_user_ca_keys = {:?}\nrevoked_keys = {:?}",
        ca.public().display().to_string(),
        krl.display().to_string()
    );
    let gw = Gateway::start(dir, &config(&ssh, PROGRAM));
    let s = Setup { tmp, gw, ca };
    let dir = s.tmp.path();
    let ok = |k: &Keypair| text(&s.login(k, &["-T"]).stdout).contains("ID=alice");

    let k7 = s.key_with_cert("serial7", &["-I", "k7", "-n", "alice", "-z", "7"]);
    let k8 = s.key_with_cert("serial8", &["-I", "k8", "-n", "alice", "-z", "8"]);
    let k25 = s.key_with_cert("serial25", &["-I", "k25", "-n", "alice", "-z", "25"]);
    assert!(!ok(&k7), "serial 7 is revoked");
    assert!(!ok(&k25), "serial 25 is in a revoked range");
    assert!(ok(&k8), "serial 8 is not\n{}", s.gw.log());
    assert!(s.audit_of(&k7, "auth_failure")["reason"]
        .as_str()
        .unwrap()
        .contains("revoked"));

    // Revoking more takes effect at the next login, without a reload: by key id, and by key
    // (which refuses the certificate of that key and the key as a mapped key too).
    let byid = s.key_with_cert("byid", &["-I", "stolen-laptop", "-n", "alice", "-z", "9"]);
    assert!(ok(&byid));
    let plain = Keypair::new(dir, "plain");
    s.gw.set_keys("alice", &format!("{}\n", plain.public_line));
    assert!(s.gw.wait_log("users=1", T).is_some());
    assert!(ok(&plain));
    std::fs::write(dir.join("spec2"), "id: stolen-laptop\n").unwrap();
    ssh_keygen("-q -k -u -f revoked.krl -s user_ca.pub spec2", dir);
    ssh_keygen("-q -k -u -f revoked.krl serial8.pub plain.pub", dir);
    assert!(!ok(&byid), "revoked by key id");
    assert!(!ok(&k8), "revoked by its key");
    assert!(!ok(&plain), "a mapped key revoked");
    // ssh-keygen agrees about what the file says.
    let q = Command::new("ssh-keygen")
        .args([
            "-Q",
            "-f",
            "revoked.krl",
            "serial8-cert.pub",
            "byid-cert.pub",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(text(&q.stdout).matches("REVOKED").count() == 2, "{q:?}");

    // A broken list fails closed (every key refused), and a fixed one works again.
    std::fs::write(&krl, b"SSHKRL\n\0garbage").unwrap();
    let fresh = s.key_with_cert("fresh", &["-I", "fresh", "-n", "alice", "-z", "100"]);
    assert!(
        !ok(&fresh),
        "an unreadable revocation list refuses everyone"
    );
    assert!(s.gw.wait_log("cannot use the changed file", T).is_some());
    // The plain-text form: one public key per line.
    std::fs::write(&krl, format!("# lost\n{}\n", plain.public_line)).unwrap();
    assert!(ok(&fresh), "{}", s.gw.log());
    assert!(!ok(&plain));
}

#[test]
fn a_bad_ca_file_stops_the_start_naming_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("cas.pub");
    std::fs::write(&ca, "# our CA\nssh-ed25519 not-base64!!\n").unwrap();
    std::fs::write(
        tmp.path().join("gateway.toml"),
        config(
            &format!("trusted_user_ca_keys = {:?}", ca.display().to_string()),
            "",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(tmp.path().join("gateway.toml"))
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains(&format!("{}:2:", ca.display())), "{said}");
}
