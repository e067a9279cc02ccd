//! Debian's HAProxy, started on loopback in front of gateway nodes (stopped on Drop).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use super::idp::free_port;
use super::{eventually, T};

/// A running HAProxy, round robin over its backends.
pub struct Haproxy {
    child: Child,
    /// Where clients connect.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// TCP mode (SSH); each backend's `server` line ends with `server_opts` (`send-proxy-v2`).
    pub fn tcp(backends: &[u16], server_opts: &str) -> Haproxy {
        Self::start("tcp", "", backends, server_opts)
    }

    /// HTTP mode (the web front); `frontend` lines go into the frontend section
    /// (`option forwardfor`, `http-request set-header X-Forwarded-Proto https`).
    pub fn http(backends: &[u16], frontend: &str) -> Haproxy {
        Self::start("http", frontend, backends, "")
    }

    fn start(mode: &str, frontend: &str, backends: &[u16], server_opts: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  server n{i} 127.0.0.1:{p} {server_opts}\n"))
            .collect();
        let cfg = format!(
            "global\n  maxconn 200\ndefaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend front\n  bind 127.0.0.1:{port}\n{frontend}\n  default_backend gateways\nbackend gateways\n  balance roundrobin\n{servers}"
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
