//! The whole `gateway.toml` as serde types.
//!
//! Every section denies unknown keys, and every value that can be wrong is checked *while it is
//! deserialized* (through `try_from` newtypes), so that a bad value is reported by the TOML parser
//! with the line and column where it stands, e.g. `gateway.toml:12:10: invalid socket address`.
//! Relative paths are resolved against the directory of the config file, so the gateway behaves the
//! same whatever directory it is started from.
//!
//! This module depends on nothing else in the crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod oidc;
mod session;
mod state;
mod web;

pub use oidc::*;
pub use session::*;
pub use state::*;
pub use web::*;

/// A configuration that could not be loaded, naming the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or an invalid value.
    #[error("{location}: {message}")]
    Invalid {
        /// `file:line:column` (or just the file when the parser gave no position).
        location: String,
        /// What is wrong, including the offending line.
        message: String,
    },
}

/// The root of `gateway.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[ssh]`: the SSH front.
    pub ssh: SshConfig,
    /// `[session]`: what runs for an authenticated user and in which environment.
    pub session: SessionConfig,
    /// `[logging]`: log output.
    pub logging: LoggingConfig,
    /// `[oidc]`: sign-in with an identity provider (device flow). Absent: key-only.
    pub oidc: Option<OidcConfig>,
    /// `[state]`: where durable state (key enrollments) lives.
    pub state: StateConfig,
    /// `[web]`: the optional browser terminal. Absent: off.
    pub web: Option<WebConfig>,
    /// `[limits]`: connection, session and abuse limits.
    pub limits: LimitsConfig,
    /// `[audit]`: the audit log. Absent: off.
    pub audit: Option<AuditConfig>,
    /// `[recording]`: session recordings. Absent: off.
    pub recording: Option<RecordingConfig>,
    /// `[metrics]`: Prometheus endpoint. Absent: off (the web front still serves /metrics).
    pub metrics: Option<MetricsConfig>,
    /// `[admin]`: the admin socket.
    pub admin: AdminConfig,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most concurrent SSH connections; more are closed at once (before any SSH work).
    pub max_connections: usize,
    /// Most concurrent sessions (programs) per user; 0: no limit.
    pub max_sessions_per_user: usize,
    /// An unauthenticated connection is closed after this (a device sign-in in progress is
    /// authenticated as pending and has `[oidc] pending_timeout` instead).
    #[serde(with = "humantime_serde")]
    pub login_grace: Duration,
    /// A session with no input for this long is ended (after a warning); "0s": never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections from one address that end without authenticating, within `ban_duration`,
    /// before that address is banned; 0: never ban.
    pub auth_failures_before_ban: u32,
    /// How long a ban lasts (banned addresses are closed at accept, before any SSH work).
    #[serde(with = "humantime_serde")]
    pub ban_duration: Duration,
    /// On SIGTERM, how long sessions may go on (after a warning line) before they are ended.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Most session channels open at once on one SSH connection (sshd's MaxSessions); a
    /// connection still signing in may open one.
    pub max_channels_per_connection: usize,
    /// Detached sessions a user may have; beyond it the longest-detached end.
    pub max_detached_per_user: usize,
    /// IPv6 clients are counted by network for per-address limits and bans: addresses that
    /// share this many leading bits count as one (a host usually gets a whole /64).
    pub ipv6_prefix: u8,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1024,
            max_sessions_per_user: 8,
            login_grace: Duration::from_secs(120),
            idle_timeout: Duration::ZERO,
            auth_failures_before_ban: 10,
            ban_duration: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(10),
            max_channels_per_connection: 10,
            max_detached_per_user: 3,
            ipv6_prefix: 64,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines file (append-only, fsync per record, mode 0600).
    pub path: PathBuf,
}

/// `[recording]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Directory of asciicast v2 files (created 0700; files 0600).
    pub dir: PathBuf,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`GET /metrics`).
    pub listen: SocketAddr,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin socket (mode 0600); `hermes-ssh-gateway sessions` talks to it.
    pub socket: PathBuf,
    /// User ids that may use the operator's views from their own SSH session
    /// (`ssh -t host admin`, `ssh host admin sessions`).
    pub users: Vec<String>,
    /// IdP groups whose members may do the same (groups of the validated token).
    pub groups: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from("state/admin.sock"),
            users: Vec::new(),
            groups: Vec::new(),
        }
    }
}

/// `[ssh]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address to listen on. Default `127.0.0.1:2222`.
    pub listen: SocketAddr,
    /// Ed25519 host key in OpenSSH format; generated (mode 0600) when missing.
    pub host_key: PathBuf,
    /// Directory of `<user-id>.keys` files (OpenSSH public-key lines).
    pub users_dir: PathBuf,
    /// A connection with no traffic at all for this long is closed (russh's own timer).
    #[serde(with = "humantime_serde")]
    pub inactivity_timeout: Duration,
    /// Keepalive probes are sent after this much silence from the client; 0 disables.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A file of CA public keys (sshd's `TrustedUserCAKeys`): user certificates they sign
    /// log in as their principal. Absent: certificates are refused.
    pub trusted_user_ca_keys: Option<PathBuf>,
    /// Which certificate principals count, and how they become user ids.
    pub cert_principal_map: CertPrincipalMap,
    /// Clock skew allowed at both ends of a certificate's validity window.
    #[serde(with = "humantime_serde")]
    pub cert_leeway: Duration,
    /// OpenSSH's revoked-keys file (sshd's `RevokedKeys`): public keys, one per line, or a
    /// KRL made by `ssh-keygen -k`. Re-read when it changes.
    pub revoked_keys: Option<PathBuf>,
    /// Security keys (`sk-…`) must show the user's touch in every signature, unless their
    /// key line says `no-touch-required` or their certificate has that extension.
    pub require_user_presence: bool,
    /// HAProxy's PROXY protocol from `trusted_proxies`: `"off"`, `"v1"`, `"v2"` or `"any"`.
    pub proxy_protocol: ProxyProtocol,
    /// Load balancers whose PROXY header names the client (addresses and CIDR blocks).
    pub trusted_proxies: Vec<AddressPattern>,
}

/// `[ssh] proxy_protocol`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No PROXY protocol.
    #[default]
    Off,
    /// Text headers.
    V1,
    /// Binary headers.
    V2,
    /// Either.
    Any,
}

/// An address (`10.0.0.1`, `::1`) or a CIDR block (`10.0.0.0/8`), checked where it is written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AddressPattern(pub String);

impl TryFrom<String> for AddressPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.as_str(), None),
        };
        let max = match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => {
                return Err(format!(
                    "{s:?} is not an address or a block like 10.0.0.0/8"
                ))
            }
        };
        match bits.map(str::parse::<u32>) {
            None => Ok(AddressPattern(s)),
            Some(Ok(b)) if b <= max => Ok(AddressPattern(s)),
            Some(_) => Err(format!("{s:?}: the prefix length must be 0..={max}")),
        }
    }
}

/// `[ssh] cert_principal_map`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertPrincipalMap {
    /// Only principals starting with this count, without it.
    pub strip_prefix: Option<String>,
    /// Only principals ending with this count, without it.
    pub strip_suffix: Option<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            host_key: PathBuf::from("keys/host_ed25519"),
            users_dir: PathBuf::from("keys/users"),
            inactivity_timeout: Duration::from_secs(3600),
            keepalive_interval: Duration::from_secs(30),
            trusted_user_ca_keys: None,
            cert_principal_map: CertPrincipalMap::default(),
            cert_leeway: Duration::from_secs(60),
            revoked_keys: None,
            require_user_presence: true,
            proxy_protocol: ProxyProtocol::Off,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Filter used when `RUST_LOG` is unset, e.g. `"info"` or `"hermes_ssh_gateway=debug"`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads and validates `path`; relative paths inside are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Absolute, because programs get some of these paths (a sandboxed HOME) and start in
        // another directory.
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        cfg.resolve_paths(&base);
        Ok(cfg)
    }

    /// Parses TOML text; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| located(origin, text, &e))?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks that need more than one value at a time.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let checked = check_ssh(&self.ssh)
            .and_then(|()| check_session(&self.session))
            .and_then(|()| self.oidc.as_ref().map_or(Ok(()), check_oidc))
            .and_then(|()| check_limits(&self.limits, self.web.as_ref(), &self.ssh));
        checked.map_err(|message| ConfigError::Invalid {
            location: origin.to_owned(),
            message,
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.ssh.host_key);
        abs(&mut self.ssh.users_dir);
        abs(&mut self.state.dir);
        abs(&mut self.admin.socket);
        if let Some(p) = &mut self.ssh.trusted_user_ca_keys {
            abs(p);
        }
        if let Some(p) = &mut self.ssh.revoked_keys {
            abs(p);
        }
        if let Some(a) = &mut self.audit {
            abs(&mut a.path);
        }
        if let Some(r) = &mut self.recording {
            abs(&mut r.dir);
        }
        let abs_template = |t: &mut Template| {
            if Path::new(t.as_str()).is_relative() {
                *t = Template(base.join(t.as_str()).display().to_string());
            }
        };
        if let Some(p) = &mut self.session.home_skeleton {
            abs(p);
        }
        let sb = &mut self.session.sandbox;
        sb.read.iter_mut().for_each(abs_template);
        sb.write.iter_mut().for_each(abs_template);
        abs_template(&mut sb.home);
    }

    /// What no program may reach: the gateway's secrets and its state, with what each is.
    pub fn protected_paths(&self, config_file: &Path) -> Vec<(&'static str, PathBuf)> {
        let mut out = vec![
            ("the configuration file", config_file.to_owned()),
            ("the host key", self.ssh.host_key.clone()),
            (
                "the key files ([ssh] users_dir)",
                self.ssh.users_dir.clone(),
            ),
            ("the state directory", self.state.dir.clone()),
        ];
        if let Some(p) = &self.ssh.trusted_user_ca_keys {
            out.push(("the trusted CA keys", p.clone()));
        }
        if let Some(p) = &self.ssh.revoked_keys {
            out.push(("the revoked keys", p.clone()));
        }
        if let Some(dir) = self.admin.socket.parent() {
            out.push(("the admin socket's directory", dir.to_owned()));
        }
        if let Some(a) = &self.audit {
            out.push(("the audit log", a.path.clone()));
        }
        if let Some(r) = &self.recording {
            out.push(("the recordings", r.dir.clone()));
        }
        out
    }
}

/// The variable that always carries the user id.
pub const IDENTITY_VAR: &str = "HERMES_DASHBOARD_USER_ID";

/// What is wrong with `[ssh]` beyond what each value checks itself.
fn check_ssh(ssh: &SshConfig) -> Result<(), String> {
    if ssh.proxy_protocol != ProxyProtocol::Off && ssh.trusted_proxies.is_empty() {
        return Err("[ssh] proxy_protocol is on but trusted_proxies is empty: list the load balancers' addresses (a header from anyone else is refused)".into());
    }
    Ok(())
}

/// What is wrong with `[session]` beyond what each value checks itself.
fn check_session(session: &SessionConfig) -> Result<(), String> {
    if let Some(w) = &session.workdir {
        if w.as_str().is_empty() {
            return Err("[session] workdir: must not be empty".into());
        }
    }
    for name in &session.identity_env {
        if session.env.contains_key(name) {
            return Err(format!(
                    "[session.env] {}: this name is in [session] identity_env; identity variables are set by the gateway only",
                    name.as_str()
                ));
        }
    }
    for name in session.claims_env.keys() {
        let n = name.as_str();
        if n == IDENTITY_VAR
            || session.identity_env.contains(name)
            || session.env.contains_key(name)
            || ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR"].contains(&n)
            || n.starts_with("LD_")
        {
            return Err(format!(
                    "[session] claims_env: {n} is set by the gateway or [session] already; pick another name (e.g. HERMES_DASHBOARD_USER_NAME)"
                ));
        }
    }
    if session.env.keys().any(|k| k.as_str() == IDENTITY_VAR) {
        return Err(format!(
            "[session.env] {IDENTITY_VAR}: identity variables are set by the gateway only"
        ));
    }
    if session.create_accounts && session.run_as.is_none() && session.accounts.is_empty() {
        return Err(
                "[session] create_accounts: needs run_as or [session.accounts] (it creates the accounts they name)".into(),
            );
    }
    if !session.home_base.is_absolute() {
        return Err("[session] home_base: must be an absolute path".into());
    }
    let l = &session.limits;
    if l.memory.is_some_and(|m| m.as_u64() < 16 << 20) {
        return Err("[session.limits] memory: at least 16MiB (no program starts with less)".into());
    }
    if l.processes == Some(0) || l.open_files.is_some_and(|n| n < 16) {
        return Err(
            "[session.limits] processes must be at least 1 and open_files at least 16".into(),
        );
    }
    if l.cpu_time.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err("[session.limits] cpu_time: at least 1s".into());
    }
    let sb = &session.sandbox;
    for (key, t) in sb
        .read
        .iter()
        .map(|t| ("read", t))
        .chain(sb.write.iter().map(|t| ("write", t)))
        .chain([("home", &sb.home)])
    {
        let whole = Path::new(t.as_str())
            .components()
            .filter(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .contains(USER_ID_PLACEHOLDER)
            })
            .all(|c| c.as_os_str() == USER_ID_PLACEHOLDER);
        if !whole || t.as_str().is_empty() {
            return Err(format!(
                    "[session.sandbox] {key}: {:?}: {USER_ID_PLACEHOLDER} must be a whole path component (as in \"/srv/hermes/{USER_ID_PLACEHOLDER}\")",
                    t.as_str()
                ));
        }
    }
    if !sb.home.uses_user_id() {
        return Err(format!(
                "[session.sandbox] home: {:?} must contain {USER_ID_PLACEHOLDER} (each user gets their own)",
                sb.home.as_str()
            ));
    }
    Ok(())
}

/// What is wrong with `[oidc]`.
fn check_oidc(o: &OidcConfig) -> Result<(), String> {
    if o.client_id.is_empty() {
        return Err("[oidc] client_id: must not be empty".into());
    }
    if o.user_id_claim.is_empty() {
        return Err("[oidc] user_id_claim: must not be empty".into());
    }
    if !o.scopes.iter().any(|s| s == "openid") {
        return Err(
            "[oidc] scopes: must include \"openid\" (the ID token carries the identity)".into(),
        );
    }
    if o.max_pending == 0 || o.max_pending_per_ip == 0 {
        return Err("[oidc] max_pending, max_pending_per_ip: must be at least 1".into());
    }
    Ok(())
}

/// Limits that would refuse everyone, or make no sense.
fn check_limits(
    limits: &LimitsConfig,
    web: Option<&WebConfig>,
    ssh: &SshConfig,
) -> Result<(), String> {
    if limits.max_connections == 0 {
        return Err("[limits] max_connections: must be at least 1".into());
    }
    if let Some(w) = web {
        let zero = [
            ("max_connections", w.max_connections == 0),
            (
                "max_connections_per_address",
                w.max_connections_per_address == 0,
            ),
            ("max_logins_per_address", w.max_logins_per_address == 0),
            ("header_timeout", w.header_timeout.is_zero()),
            ("request_timeout", w.request_timeout.is_zero()),
            ("max_message_size", w.max_message_size.as_u64() < 1024),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(format!(
                "[web] {key}: too small (a zero would refuse every browser)"
            ));
        }
    }
    if limits.max_channels_per_connection == 0 {
        return Err("[limits] max_channels_per_connection: must be at least 1".into());
    }
    if !(16..=128).contains(&limits.ipv6_prefix) {
        return Err(format!(
            "[limits] ipv6_prefix: {} is not a prefix length from 16 to 128",
            limits.ipv6_prefix
        ));
    }
    if limits.login_grace.is_zero() {
        return Err("[limits] login_grace: must be more than 0".into());
    }
    if ssh.inactivity_timeout.is_zero() {
        return Err(
                "[ssh] inactivity_timeout: must be more than 0 (use a large value such as \"30d\" to effectively disable it)".into(),
            );
    }
    Ok(())
}

/// Turns a toml error into `origin:line:col: message` plus the offending line.
fn located(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim_end();
            ConfigError::Invalid {
                location: format!("{origin}:{line}:{col}"),
                message: format!("{message}\n    {line} | {src}"),
            }
        }
        None => ConfigError::Invalid {
            location: origin.to_owned(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text, "g.toml") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = Config::parse("", "g.toml").unwrap();
        assert_eq!(c.ssh.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.session.command.words(), ["hermes", "--tui"]);
        assert_eq!(c.session.exec, ExecPolicy::Refuse);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = err("[ssh]\nlisten = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n");
        assert!(e.starts_with("g.toml:3:1: "), "{e}");
        assert!(e.contains("listen_addr"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_located() {
        assert!(err("[ssh]\nlisten = 5\n").starts_with("g.toml:2:"));
        assert!(err("[ssh]\nlisten = \"nowhere\"\n").starts_with("g.toml:2:"));
        let e = err("[session]\nkill_grace = \"soon\"\n");
        assert!(e.starts_with("g.toml:2:"), "{e}");
        let e = err("[session]\ncommand = []\n");
        assert!(e.contains("empty"), "{e}");
        let e = err("[session]\nidentity_env = [\"1BAD\"]\n");
        assert!(e.contains("1BAD") && e.starts_with("g.toml:2:"), "{e}");
        let e = err("[session.env]\nX = \"{home}/a\"\n");
        assert!(e.contains("{user_id}"), "{e}");
        let e = err("[session]\nexec = \"shell\"\n");
        assert!(e.starts_with("g.toml:2:"), "{e}");
    }

    #[test]
    fn identity_variables_cannot_be_configured_as_plain_env() {
        let e = err("[session.env]\nHERMES_DASHBOARD_USER_ID = \"x\"\n");
        assert!(e.contains("HERMES_DASHBOARD_USER_ID"), "{e}");
        let e = err("[session]\nidentity_env=[\"A\"]\n[session.env]\nA = \"x\"\n");
        assert!(e.contains("identity_env"), "{e}");
    }

    #[test]
    fn durations_are_strings() {
        let c = Config::parse("[session]\nkill_grace = \"500ms\"\n", "g").unwrap();
        assert_eq!(c.session.kill_grace, Duration::from_millis(500));
        let c = Config::parse("[ssh]\ninactivity_timeout = \"12h\"\n", "g").unwrap();
        assert_eq!(c.ssh.inactivity_timeout, Duration::from_secs(12 * 3600));
    }

    #[test]
    fn oidc_section() {
        let c = Config::parse(
            "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"gw\"\nclient_secret = \"s3cr3t\"\n",
            "g",
        )
        .unwrap();
        let o = c.oidc.unwrap();
        assert_eq!(o.user_id_claim, "sub");
        assert_eq!(o.enroll_ttl, Duration::from_secs(30 * 24 * 3600));
        assert!(!format!("{o:?}").contains("s3cr3t"), "secrets never print");
        let e = err("[oidc]\nissuer = \"http://idp.example.com\"\nclient_id = \"gw\"\n");
        assert!(e.contains("https") && e.starts_with("g.toml:2:"), "{e}");
        assert!(Config::parse(
            "[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"gw\"\n",
            "g"
        )
        .is_ok());
        let e = err("[oidc]\nissuer = \"https://x\"\n");
        assert!(e.contains("client_id"), "{e}");
        let e = err("[oidc]\nissuer = \"https://x\"\nclient_id = \"a\"\nscopes = [\"email\"]\n");
        assert!(e.contains("openid"), "{e}");
    }

    #[test]
    fn env_patterns() {
        let p = EnvPattern::try_from("LC_*".to_string()).unwrap();
        assert!(p.matches("LC_ALL") && !p.matches("LANG"));
        assert!(EnvPattern::try_from("*".to_string()).is_err());
        assert!(EnvPattern::try_from("LA NG".to_string()).is_err());
    }

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../../gateway.toml");
        Config::parse(text, "gateway.toml").unwrap();
    }
}
