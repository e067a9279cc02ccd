//! The test identity provider: `tests/idp/server.mjs` (npm `oidc-provider`, pinned with its lock
//! file) on 127.0.0.1, and a person's browser steps done with plain HTTP and a cookie jar.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

static NPM: Mutex<bool> = Mutex::new(false);

fn idp_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/idp"))
}

/// Installs the IdP's npm packages once (scripts/test.sh does this too; this covers `cargo test`).
fn ensure_npm() {
    let mut done = NPM.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    if !idp_dir()
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        let st = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(idp_dir())
            .status()
            .expect("npm runs (Node.js is needed for the test IdP)");
        assert!(st.success(), "npm ci in tests/idp failed");
    }
    *done = true;
}

/// A running test IdP.
pub struct Idp {
    child: Child,
    pub issuer: String,
    pub port: u16,
}

impl Idp {
    /// Starts the IdP with env overrides, e.g. `[("INTERVAL", "1"), ("DEVICE_TTL", "5")]`.
    pub fn start(env: &[(&str, &str)]) -> Idp {
        ensure_npm();
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(idp_dir())
            .env("INTERVAL", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("node starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(i) = v["issuer"].as_str() {
                        let _ = tx.send(i.to_owned());
                    }
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the test IdP prints its issuer");
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Idp {
            child,
            issuer,
            port,
        }
    }

    /// Test controls: `{"slow_down": N}`, `{"token_mode": "foreign_aud"}`, …
    pub fn configure(&self, json: serde_json::Value) {
        self.control("config", json);
    }

    /// Changes a user as the IdP's admin would: `{"user": "alice", "groups": [..]}`,
    /// `{"user": "alice", "disabled": true}`.
    pub fn change_user(&self, json: serde_json::Value) {
        self.control("users", json);
    }

    fn control(&self, what: &str, json: serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/test/{what}", self.issuer))
            .body(json.to_string())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "/test/{what}: {}", r.status());
    }

    /// Times (ms since the epoch) of the token requests seen.
    pub fn polls(&self) -> Vec<u64> {
        let v: serde_json::Value = reqwest::blocking::get(format!("{}/test/polls", self.issuer))
            .unwrap()
            .json()
            .unwrap();
        v["times"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    }

    /// Opens the URL (it sets the session cookie the POST needs) and answers the confirmation
    /// page with `decision` (`confirm` or `abort`).
    fn submit_code(
        &self,
        verification_uri_complete: &str,
        decision: &str,
    ) -> (reqwest::blocking::Client, reqwest::blocking::Response) {
        let b = super::browser();
        let (xsrf, code) = self.confirm_page(&b, verification_uri_complete);
        let r = b
            .post(format!("{}/device", self.issuer))
            .form(&[
                ("xsrf", xsrf.as_str()),
                ("user_code", code.as_str()),
                (decision, "yes"),
            ])
            .send()
            .unwrap();
        (b, r)
    }

    /// What a person does with the URL: open it, confirm the code, log in as `user`.
    pub fn approve(&self, verification_uri_complete: &str, user: &str) {
        let (b, r) = self.submit_code(verification_uri_complete, "confirm");
        let interaction = r.url().to_string();
        assert!(
            interaction.contains("/interaction/"),
            "landed on {interaction}"
        );
        let r = b
            .post(format!("{interaction}/login"))
            .form(&[("login", user)])
            .send()
            .unwrap();
        assert!(r.status().is_success(), "login: {}", r.status());
        let body = r.text().unwrap();
        assert!(
            body.contains("Sign-in Success") || body.contains("success"),
            "{body}"
        );
    }

    /// Denies the request at the confirmation page.
    pub fn deny(&self, verification_uri_complete: &str) {
        let (_, r) = self.submit_code(verification_uri_complete, "abort");
        assert!(
            r.status().is_success() || r.status().is_redirection(),
            "{}",
            r.status()
        );
    }

    /// GET the complete URL first: it sets the session cookie the POST needs.
    fn confirm_page(&self, b: &reqwest::blocking::Client, uri: &str) -> (String, String) {
        let page = b.get(uri).send().unwrap().text().unwrap();
        let xsrf = page
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("no xsrf in {page}"))
            .to_owned();
        let code = uri.split("user_code=").nth(1).unwrap().to_owned();
        (xsrf, code)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (for a server that starts later, e.g. an IdP that is "down" at first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `[oidc]` section for `issuer`, plus `extra` lines.
pub fn oidc_section(issuer: &str, extra: &str) -> String {
    format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"hermes-gateway\"\nscopes = [\"openid\", \"email\", \"profile\", \"groups\"]\n{extra}\n"
    )
}

/// Finds the verification URL with the code in what the client showed.
pub fn find_complete_uri(text: &str) -> Option<String> {
    let start = text.find("http://127.0.0.1")?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '\u{1b}')
        .unwrap_or(rest.len());
    let uri = &rest[..end];
    uri.contains("user_code=").then(|| uri.to_owned())
}

/// Logs `user` in through the IdP, as a browser would (following every redirect).
pub fn browser_login(gateway_url: &str, user: &str) -> reqwest::blocking::Client {
    let b = super::browser();
    let r = b.get(format!("{gateway_url}/auth/login")).send().unwrap();
    let interaction = r.url().to_string();
    assert!(
        interaction.contains("/interaction/"),
        "at the IdP: {interaction}"
    );
    let r = b
        .post(format!("{interaction}/login"))
        .form(&[("login", user)])
        .send()
        .unwrap();
    assert!(
        r.url().as_str().starts_with(gateway_url),
        "back at the gateway: {}",
        r.url()
    );
    let page = r.text().unwrap();
    assert!(page.contains("xterm.js") && page.contains(user), "{page}");
    b
}
