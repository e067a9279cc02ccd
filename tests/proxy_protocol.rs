//! PROXY protocol behind a real load balancer: Debian's HAProxy (started by the test on
//! loopback) in front of two gateway nodes sharing one real Redis, the real OpenSSH client
//! bound to distinct loopback addresses (`ssh -b`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::haproxy::Haproxy;
use common::redis::RedisServer;
use common::*;

fn node(dir: &std::path::Path, redis: &RedisServer, name: &str, version: &str) -> Gateway {
    let ssh = format!("proxy_protocol = \"{version}\"\ntrusted_proxies = [\"127.0.0.1\"]");
    let extra = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo ON-{name}\"]\n[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nnode_id = \"{name}\"\n[limits]\nauth_failures_before_ban = 2\n[audit]\npath = \"audit.log\"\n",
        redis.url()
    );
    Gateway::start(dir, &config(&ssh, &extra))
}

/// `ssh -b from` through the balancer; the output.
fn through(lb: &Haproxy, key: &Keypair, from: &str, command: &[&str]) -> std::process::Output {
    let mut ssh = Command::new("ssh");
    ssh.args(ssh_base_args(lb.port))
        .args(["-b", from, "-i"])
        .arg(&key.private)
        .arg("127.0.0.1")
        .args(command)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null());
    run(ssh, T)
}

fn behind_haproxy(version: &str, send_proxy: &str) {
    let redis = RedisServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path(), &redis, "node-a", version);
    let b = node(db.path(), &redis, "node-b", version);
    let key = Keypair::new(da.path(), "alice");
    let stranger = Keypair::new(da.path(), "stranger");
    for gw in [&a, &b] {
        gw.set_keys("alice", &format!("{}\n", key.public_line));
        assert!(gw.wait_log("users=1", T).is_some());
    }
    let lb = Haproxy::tcp(&[a.port, b.port], send_proxy);

    // The client's own address reaches whoami and the audit log of either node.
    let mut nodes = std::collections::HashSet::new();
    for _ in 0..2 {
        let out = through(&lb, &key, "127.0.0.55", &["whoami"]);
        let who: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"));
        assert_eq!(who["remote"], "127.0.0.55", "{who}");
    }
    // Round robin: two connections in a row land on both nodes.
    for _ in 0..2 {
        let out = through(&lb, &key, "127.0.0.55", &[]);
        nodes.insert(text(&out.stdout).trim().to_owned());
    }
    assert_eq!(nodes.len(), 2, "both nodes served: {nodes:?}");
    let audit_a = audit_when(&da.path().join("audit.log"), |l| l.contains("auth_success"));
    assert!(audit_a.contains("\"remote\":\"127.0.0.55\""), "{audit_a}");
    assert!(!audit_a.contains("\"remote\":\"127.0.0.1\""), "{audit_a}");

    // Two failed logins from .55 (whichever node) ban .55 on both; .66 still logs in through
    // the same balancer.
    for _ in 0..2 {
        let out = through(&lb, &stranger, "127.0.0.55", &["whoami"]);
        assert_eq!(out.status.code(), Some(255));
    }
    let banned = |gw: &Gateway| {
        gw.log()
            .contains("address banned after repeated failed logins")
    };
    assert!(
        eventually(T, || banned(&a) || banned(&b)),
        "{}\n{}",
        a.log(),
        b.log()
    );
    for _ in 0..2 {
        let out = through(&lb, &key, "127.0.0.55", &["whoami"]);
        assert_eq!(out.status.code(), Some(255), "banned: {out:?}");
        let out = through(&lb, &key, "127.0.0.66", &["whoami"]);
        assert!(text(&out.stdout).contains("127.0.0.66"), "{out:?}");
    }
}

#[test]
fn haproxy_v2_in_front_of_two_nodes_passes_the_client_address() {
    behind_haproxy("v2", "send-proxy-v2");
}

#[test]
fn haproxy_v1_in_front_of_two_nodes_passes_the_client_address() {
    behind_haproxy("any", "send-proxy");
}

#[test]
fn headers_from_untrusted_addresses_and_trusted_proxies_without_one_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ssh = "proxy_protocol = \"any\"\ntrusted_proxies = [\"127.0.0.1\"]";
    let gw = Gateway::start(tmp.path(), &config(ssh, "[audit]\npath = \"audit.log\"\n"));
    let addr: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    let from = |ip: &str| {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.connect(&addr.into()).unwrap();
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(T)).unwrap();
        s
    };
    // A client that claims to be someone else.
    let mut s = from("127.0.0.77");
    s.write_all(b"PROXY TCP4 10.9.9.9 127.0.0.1 5555 22\r\nSSH-2.0-liar\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let log = audit_when(&tmp.path().join("audit.log"), |l| {
        l.contains("untrusted_proxy_header")
    });
    assert!(log.contains("\"remote\":\"127.0.0.77\""), "{log}");
    assert!(!log.contains("10.9.9.9"), "{log}");
    // A trusted proxy that sends SSH straight away.
    let mut s = from("127.0.0.1");
    s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
    let _ = s.read_to_end(&mut rest);
    let log = audit_when(&tmp.path().join("audit.log"), |l| {
        l.contains("\"proxy_header\"")
    });
    assert!(log.contains("connection_refused"), "{log}");
    // An ordinary client from elsewhere is unaffected.
    let key = Keypair::new(tmp.path(), "k");
    gw.set_keys("alice", &format!("{}\n", key.public_line));
    assert!(gw.wait_log("users=1", T).is_some());
    let mut ssh = gw.ssh(&key);
    ssh.args(["-b", "127.0.0.88", "127.0.0.1", "whoami"]);
    let out = run(ssh, T);
    assert!(text(&out.stdout).contains("127.0.0.88"), "{out:?}");
}

/// A node whose web front listens on `port` behind the balancer at `public_url`.
fn web_node(
    dir: &std::path::Path,
    redis: &RedisServer,
    name: &str,
    port: u16,
    public_url: &str,
    issuer: &str,
) -> Gateway {
    let extra = format!(
        "[session]\ncommand = [\"/bin/sh\", \"-c\", \"echo ON-{name}\"]\n[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{public_url}\"\ntrusted_proxies = [\"127.0.0.1\"]\n[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nnode_id = \"{name}\"\n[audit]\npath = \"audit.log\"\n{}",
        redis.url(),
        common::idp::oidc_section(issuer, "")
    );
    let gw = Gateway::start(dir, &config("", &extra));
    assert!(
        gw.wait_log("identity provider discovered", T).is_some(),
        "{}",
        gw.log()
    );
    assert!(gw.wait_log("web front listening", T).is_some());
    gw
}

/// A browser at `from` (a loopback address) that stops before following the IdP's redirect
/// back to the gateway, so the test chooses the node that receives the callback.
fn browser_from(from: &str, stop_at_callback: bool) -> reqwest::blocking::Client {
    let policy = if stop_at_callback {
        reqwest::redirect::Policy::custom(|a| {
            if a.url().path() == "/auth/callback" {
                a.stop()
            } else {
                a.follow()
            }
        })
    } else {
        reqwest::redirect::Policy::limited(10)
    };
    reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(policy)
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .timeout(T)
        .build()
        .unwrap()
}

fn me(b: &reqwest::blocking::Client, base: &str) -> (u16, String) {
    let r = b.get(format!("{base}/api/auth/me")).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn browsers_behind_haproxy_share_sessions_across_nodes_and_keep_their_address() {
    let redis = RedisServer::start();
    let (pa, pb) = (common::idp::free_port(), common::idp::free_port());
    let lb = Haproxy::http(&[pa, pb], "  option forwardfor");
    let public = format!("http://127.0.0.1:{}", lb.port);
    let idp = common::idp::Idp::start(&[("REDIRECT_URIS", &format!("{public}/auth/callback"))]);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = web_node(da.path(), &redis, "node-a", pa, &public, &idp.issuer);
    let b = web_node(db.path(), &redis, "node-b", pb, &public, &idp.issuer);
    let (node_a, node_b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );

    // A login started on A comes back to B: the login in flight is in Redis.
    let browser = browser_from("127.0.0.77", true);
    let r = browser.get(format!("{node_a}/auth/login")).send().unwrap();
    let interaction = r.url().to_string();
    assert!(interaction.contains("/interaction/"), "{interaction}");
    let r = browser
        .post(format!("{interaction}/login"))
        .form(&[("login", "alice")])
        .send()
        .unwrap();
    let callback = r.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        callback.starts_with(&format!("{public}/auth/callback")),
        "{callback}"
    );
    let r = browser
        .get(callback.replace(&public, &node_b))
        .send()
        .unwrap();
    assert_eq!(r.url().path(), "/", "{}", b.log());
    assert!(r.text().unwrap().contains("xterm.js"), "{}", b.log());
    // Signed in everywhere: B, A and the balancer.
    for base in [&node_b, &node_a, &public] {
        let (status, body) = me(&browser, base);
        assert_eq!(status, 200, "{base}: {body}");
        assert!(body.contains("\"alice\""), "{body}");
    }
    // Logout on B ends the session on A.
    let r = browser
        .post(format!("{node_b}/auth/logout"))
        .header("Origin", &public)
        .send()
        .unwrap();
    assert!(
        r.status().is_redirection() || r.status().is_success(),
        "{}",
        r.status()
    );
    for base in [&node_a, &node_b] {
        assert_eq!(me(&browser, base).0, 401, "{base}");
    }

    // A whole login through the balancer, from 127.0.0.88: the nodes see that address, taken
    // from HAProxy's X-Forwarded-For (the balancer itself connects from 127.0.0.1).
    let browser = browser_from("127.0.0.88", false);
    let r = browser.get(format!("{public}/auth/login")).send().unwrap();
    let interaction = r.url().to_string();
    let r = browser
        .post(format!("{interaction}/login"))
        .form(&[("login", "bob")])
        .send()
        .unwrap();
    assert!(r.url().as_str().starts_with(&public), "{}", r.url());
    assert!(r.text().unwrap().contains("bob"));
    let signed_in = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("auth_success") && l.contains("\"bob\""))
    };
    assert!(eventually(T, || signed_in(da.path()) || signed_in(db.path())));
    for d in [da.path(), db.path()] {
        let audit = std::fs::read_to_string(d.join("audit.log")).unwrap_or_default();
        for l in audit.lines().filter(|l| l.contains("auth_success")) {
            let want = if l.contains("\"bob\"") {
                "127.0.0.88"
            } else {
                "127.0.0.77"
            };
            assert!(l.contains(&format!("\"remote\":\"{want}\"")), "{l}");
        }
    }
    // A client's own X-Forwarded-For does not move it: HAProxy appends the real address.
    let forged = browser_from("127.0.0.99", false);
    let r = forged
        .get(format!("{public}/auth/callback?code=x&state=forged"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let refused = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("auth_failure"))
            .map(str::to_owned)
    };
    let mut line = None;
    assert!(eventually(T, || {
        line = refused(da.path()).or_else(|| refused(db.path()));
        line.is_some()
    }));
    let line = line.unwrap();
    assert!(line.contains("\"remote\":\"127.0.0.99\""), "{line}");
    drop((a, b));
}
