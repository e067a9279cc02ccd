//! Several gateway nodes, one state: two real gateway processes sharing one real Redis.

mod common;

use std::time::Duration;

use common::idp::{find_complete_uri, free_port, oidc_section, Idp};
use common::redis::RedisServer;
use common::*;

struct Node {
    gw: Gateway,
    url: String,
    _dir: tempfile::TempDir,
}

/// A node with its own directory, SSH port and web front, sharing `redis`.
fn node(name: &str, redis: &RedisServer, extra: &str, users: &[(&str, &Keypair)]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let cfg = config(
        "",
        &format!(
            "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo ON-{name} ID=$HERMES_DASHBOARD_USER_ID; sleep 600\"]\nkill_grace = \"300ms\"\n[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{url}\"\n[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nnode_id = \"{name}\"\n{extra}",
            redis.url()
        ),
    );
    let gw = Gateway::start(dir.path(), &cfg);
    for (user, key) in users {
        gw.set_keys(user, &key.public_line);
    }
    assert!(gw.wait_log(&format!("users={}", users.len()), T).is_some());
    Node { gw, url, _dir: dir }
}

fn ssh_out(gw: &Gateway, key: &Keypair, args: &[&str]) -> std::process::Output {
    let mut ssh = gw.ssh(key);
    ssh.args(args);
    run(ssh, T)
}

fn link(n: &Node, key: &Keypair) -> String {
    let out = ssh_out(&n.gw, key, &["127.0.0.1", "link"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    text(&out.stdout).trim().to_owned()
}

#[test]
fn tickets_limits_and_sessions_span_nodes() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let carol = Keypair::new(tmp.path(), "carol");
    let extra = "[limits]\nmax_sessions_per_user = 1\n";
    let a = node("node-a", &redis, extra, &[("carol", &carol)]);
    let b = node("node-b", &redis, extra, &[("carol", &carol)]);

    // A ticket minted on A is consumed on B…
    let on_a = link(&a, &carol);
    let on_b = on_a.replace(&a.url, &b.url);
    let browser_b = browser();
    let r = browser_b.get(&on_b).send().unwrap();
    assert!(r.status().is_success() && r.text().unwrap().contains("Continue as carol?"));
    let token = on_a.split("t=").nth(1).unwrap().to_owned();
    let redeem = |b: &reqwest::blocking::Client, base: &str| {
        b.post(format!("{base}/auth/ticket"))
            .header("Origin", base)
            .form(&[("t", token.as_str())])
            .send()
            .unwrap()
    };
    let r = redeem(&browser_b, &b.url);
    assert!(r.status().is_success() && r.text().unwrap().contains("carol"));
    // …and replaying it on A is refused.
    assert_eq!(redeem(&browser(), &a.url).status().as_u16(), 403);
    assert_eq!(browser().get(&on_a).send().unwrap().status().as_u16(), 403);

    // 100 browsers race on one ticket across both nodes: exactly one wins.
    let ticket = link(&a, &carol);
    let token = ticket.split("t=").nth(1).unwrap().to_owned();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let base = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            let token = token.clone();
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap()
                    .post(format!("{base}/auth/ticket"))
                    .header("Origin", base.as_str())
                    .form(&[("t", token.as_str())])
                    .send()
                    .unwrap();
                r.status().is_redirection()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap() as usize)
        .sum::<usize>();
    assert_eq!(wins, 1);

    // The per-user session limit counts sessions on every node.
    let mut ssh = a.gw.ssh(&carol);
    ssh.args(["-T", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut held = ssh.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(held.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("ON-node-a ID=carol"), "{line}");
    let out = ssh_out(&b.gw, &carol, &["-T", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("already has 1 sessions"),
        "{out:?}"
    );

    // The admin console of either node lists the sessions of both.
    let socket = b.gw.dir.join("state/admin.sock");
    let out = run(
        {
            let mut c = std::process::Command::new(BIN);
            c.args(["sessions", "--json", "--socket"]).arg(&socket);
            c
        },
        T,
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.iter()
            .any(|s| s["node"] == "node-a" && s["user"] == "carol"),
        "{list:?}"
    );
    let _ = held.kill();
    let _ = held.wait();
}

#[test]
fn enrollment_on_one_node_logs_in_on_the_other_and_logout_reaches_all() {
    let redis = RedisServer::start();
    let idp = Idp::start(&[("INTERVAL", "1")]);
    let tmp = tempfile::tempdir().unwrap();
    let key = Keypair::new(tmp.path(), "k");
    let extra = oidc_section(&idp.issuer, "max_pending_per_ip = 1\n");
    let a = node("node-a", &redis, &extra, &[]);
    let b = node("node-b", &redis, &extra, &[]);
    assert!(a.gw.wait_log("identity provider discovered", T).is_some());

    let mut args = vec!["-o".to_string(), "BatchMode=no".into()];
    args.extend(ssh_base_args(a.gw.port));
    args.extend([
        "-i".into(),
        key.private.display().to_string(),
        "127.0.0.1".into(),
    ]);
    let c = PtyClient::spawn(&args, 120, 50);
    assert!(c.expect_screen("user_code=", T), "{}", c.screen());
    // Sign-ins in progress are counted across nodes: B refuses a second one from this address.
    let other = Keypair::new(tmp.path(), "other");
    let mut ssh = std::process::Command::new("ssh");
    ssh.args(["-o", "BatchMode=no"])
        .args(ssh_base_args(b.gw.port))
        .arg("-i")
        .arg(&other.private)
        .args(["-T", "127.0.0.1"])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::null());
    let out = run(ssh, T);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(b
        .gw
        .wait_log("too many sign-ins in progress from this address", T)
        .is_some());
    idp.approve(&find_complete_uri(&c.screen()).unwrap(), "alice");
    assert!(c.expect("ON-node-a ID=alice", T), "{}", c.output());
    drop(c);

    // Instant on B.
    let out = ssh_out(&b.gw, &key, &["127.0.0.1", "whoami"]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["method"], "enrolled-key");
    // Logout on B: A refuses at once.
    assert_eq!(
        ssh_out(&b.gw, &key, &["127.0.0.1", "logout"]).status.code(),
        Some(0)
    );
    assert_eq!(
        ssh_out(&a.gw, &key, &["127.0.0.1", "whoami"]).status.code(),
        Some(255)
    );
}

#[test]
fn a_redis_outage_keeps_key_logins_working_fails_shared_operations_clearly_and_recovers() {
    let mut redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let carol = Keypair::new(tmp.path(), "carol");
    let a = node("node-a", &redis, "", &[("carol", &carol)]);
    let b = node("node-b", &redis, "", &[("carol", &carol)]);
    assert!(link(&a, &carol).contains("/auth/ticket?t="));

    redis.stop();
    for n in [&a, &b] {
        let out = ssh_out(&n.gw, &carol, &["127.0.0.1", "whoami"]);
        assert!(
            text(&out.stdout).contains("\"carol\""),
            "key login without Redis: {out:?}"
        );
    }
    let out = ssh_out(&a.gw, &carol, &["127.0.0.1", "link"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("cannot create a link right now"),
        "{out:?}"
    );
    assert!(a.gw.wait_log("Redis failed", T).is_some(), "{}", a.gw.log());
    // A ticket cannot be accepted without the store (fail closed).
    let r = browser()
        .get(format!("{}/auth/ticket?t={}", b.url, "x".repeat(43)))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    redis.restart();
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = ssh_out(&a.gw, &carol, &["127.0.0.1", "link"]);
            out.status.success()
        }),
        "recovered without restarting the gateway"
    );
    let on_b = link(&a, &carol).replace(&a.url, &b.url);
    assert!(browser().get(&on_b).send().unwrap().status().is_success());
}
