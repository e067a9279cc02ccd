//! PROXY protocol behind a real load balancer: Debian's HAProxy (started by the test on
//! loopback) in front of two gateway nodes sharing one real Redis, the real OpenSSH client
//! bound to distinct loopback addresses (`ssh -b`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use common::idp::free_port;
use common::redis::RedisServer;
use common::*;

/// HAProxy in TCP mode, round robin over `backends`, each sent `send_proxy`.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backends: &[u16], send_proxy: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  server n{i} 127.0.0.1:{p} {send_proxy}\n"))
            .collect();
        let cfg = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend ssh\n  bind 127.0.0.1:{port}\n  default_backend gateways\nbackend gateways\n  balance roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (Debian's haproxy package)");
        assert!(
            eventually(T, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "haproxy listens"
        );
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let lb = Haproxy::start(&[a.port, b.port], send_proxy);

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
