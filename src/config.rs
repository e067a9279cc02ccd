//! The whole `gateway.toml` as serde types.
//!
//! Every section denies unknown keys, and every value that can be wrong is checked *while it is
//! deserialized* (through `try_from` newtypes), so that a bad value is reported by the TOML parser
//! with the line and column where it stands, e.g. `gateway.toml:12:10: invalid socket address`.
//! Relative paths are resolved against the directory of the config file, so the gateway behaves the
//! same whatever directory it is started from.
//!
//! This module depends on nothing else in the crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::UserId;

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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: PathBuf::from("state/admin.sock"),
        }
    }
}

/// `[web]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL users open, e.g. `https://hermes.example.com` (the OIDC redirect URI is
    /// `<public_url>/auth/callback`; the only accepted `Origin`).
    pub public_url: PublicUrl,
    /// How long a browser session lasts.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Lifetime of a WebSocket ticket (`POST /api/auth/ws-ticket`).
    #[serde(default = "default_ticket_ttl", with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// Most open web connections (browser terminals included); more are closed at accept.
    #[serde(default = "default_web_max_connections")]
    pub max_connections: usize,
    /// Most open web connections from one address (IPv6: one `[limits] ipv6_prefix` network).
    #[serde(default = "default_web_max_per_address")]
    pub max_connections_per_address: usize,
    /// Time for a request's headers to arrive; also how long a keep-alive connection may idle.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time to answer any request other than a terminal's WebSocket.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most browser logins in flight (sent to the IdP, not back yet) from one address.
    #[serde(default = "default_logins_per_address")]
    pub max_logins_per_address: usize,
    /// Largest WebSocket message a browser may send (keystrokes, pastes, resizes).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: bytesize::ByteSize,
    /// Reverse proxies (addresses, CIDR blocks) whose `X-Forwarded-For` names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_web_max_connections() -> usize {
    512
}

fn default_web_max_per_address() -> usize {
    64
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_logins_per_address() -> usize {
    16
}

fn default_max_message_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(1)
}

fn default_ticket_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// `scheme://host[:port]`, no path, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicUrl(pub String);

impl TryFrom<String> for PublicUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{s:?}: public_url must be http or https"));
        }
        if u.path() != "/" || u.query().is_some() {
            return Err(format!(
                "{s:?}: public_url is scheme://host[:port] only (serving under a path is not supported)"
            ));
        }
        Ok(PublicUrl(u.origin().ascii_serialization()))
    }
}

/// `[oidc]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (https; http only for loopback addresses, for testing).
    pub issuer: IssuerUrl,
    /// The client id registered at the IdP (allowed the device grant).
    pub client_id: String,
    /// Secret of a confidential client (omit for a public client). Never logged.
    #[serde(default)]
    pub client_secret: Option<secrecy::SecretString>,
    /// Scopes requested.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that becomes the user id (`sub`, `email`, `preferred_username`, any string claim).
    #[serde(default = "default_user_id_claim")]
    pub user_id_claim: String,
    /// Prepended to the claim's value, e.g. `"corp:"`.
    #[serde(default)]
    pub user_id_prefix: String,
    /// User ids that may be both a key-file user and an identity-provider user (the same
    /// person); any other identity-provider user whose id names a key-file user is refused.
    #[serde(default)]
    pub linked_key_users: Vec<String>,
    /// The claim holding the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// When non-empty, only members of one of these groups may sign in.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// When non-empty, only verified emails in these domains may sign in.
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// How long a key proven during a device login stays bound to the user ("0s": never bound).
    #[serde(default = "default_enroll_ttl", with = "humantime_serde")]
    pub enroll_ttl: Duration,
    /// An enrolled key's login asks the IdP about its user again (with the refresh token of
    /// the sign-in that bound it) when the IdP's last word is this old. Needs `offline_access`
    /// in `scopes`; "0s": at every login.
    #[serde(default = "default_recheck_interval", with = "humantime_serde")]
    pub recheck_interval: Duration,
    /// Clock skew tolerated on `exp`/`iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Most connections waiting to sign in, overall.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Most connections waiting to sign in from one source address.
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_per_ip: usize,
    /// A connection still signing in after this long is closed (the device code's own expiry
    /// ends a sign-in earlier when it is shorter).
    #[serde(default = "default_pending_timeout", with = "humantime_serde")]
    pub pending_timeout: Duration,
}

impl OidcConfig {
    /// Why enrolled keys would never be re-checked with the IdP, if that is the case.
    pub fn recheck_warning(&self) -> Option<String> {
        (!self.enroll_ttl.is_zero() && !self.scopes.iter().any(|s| s == "offline_access")).then(|| {
            format!(
                "[oidc] scopes has no \"offline_access\": the IdP issues no refresh token, so an enrolled key logs in for its whole enroll_ttl ({}) even after the user is disabled or leaves allowed_groups; add it to re-check users every recheck_interval",
                humantime::format_duration(self.enroll_ttl)
            )
        })
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_user_id_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_enroll_ttl() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_recheck_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_max_pending() -> usize {
    64
}
fn default_max_pending_per_ip() -> usize {
    4
}
fn default_pending_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

/// An issuer URL: https, or http on a loopback address (for local testing only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IssuerUrl(pub url::Url);

impl TryFrom<String> for IssuerUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let loopback = match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        match u.scheme() {
            "https" => Ok(IssuerUrl(u)),
            "http" if loopback => Ok(IssuerUrl(u)),
            _ => Err(format!(
                "{s:?}: the issuer must use https (http is accepted only on a loopback address)"
            )),
        }
    }
}

/// Where shared state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackend {
    /// This process (tickets, limits) and a file under `dir` (enrollments).
    #[default]
    Memory,
    /// Redis, shared by several gateway nodes.
    Redis,
}

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory for the embedded state (created, mode 0700).
    pub dir: PathBuf,
    /// `memory` (default) or `redis`.
    pub backend: StateBackend,
    /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS. Never logged.
    pub redis_url: Option<secrecy::SecretString>,
    /// This node's name in the shared session directory (default: host name and pid).
    pub node_id: Option<String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("state"),
            backend: StateBackend::Memory,
            redis_url: None,
            node_id: None,
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
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            host_key: PathBuf::from("keys/host_ed25519"),
            users_dir: PathBuf::from("keys/users"),
            inactivity_timeout: Duration::from_secs(3600),
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// What to do with `ssh host <words>` that is not a built-in command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecPolicy {
    /// Refuse with a one-line message and exit status 1.
    #[default]
    Refuse,
    /// Run the configured program with the words appended as extra arguments (never via a shell).
    Args,
}

/// `[session]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// The program and its arguments. Default `["hermes", "--tui"]`.
    pub command: Argv,
    /// Extra variable names that also receive the user id (besides `HERMES_DASHBOARD_USER_ID`).
    pub identity_env: Vec<EnvName>,
    /// Extra variables; `{user_id}` in a value is replaced by the user id.
    pub env: BTreeMap<EnvName, Template>,
    /// Names copied from the gateway's own environment when set (PATH is always copied).
    pub pass_env: Vec<EnvName>,
    /// Variables a client may set with `SendEnv`/`SetEnv`; a trailing `*` matches a prefix.
    pub accept_env: Vec<EnvPattern>,
    /// Working directory of the program (`{user_id}` expanded; created with mode 0700).
    pub workdir: Option<Template>,
    /// What `ssh host <words>` does when the words are not a built-in.
    pub exec: ExecPolicy,
    /// How long the program has to exit after SIGHUP before its process group gets SIGKILL.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Run each user's program under its own Unix account named by this template
    /// (e.g. `"hermes-{user_id}"`). Unset: the gateway's own account. Needs root (or
    /// CAP_SETUID, CAP_SETGID, CAP_KILL, CAP_CHOWN, CAP_FOWNER and CAP_DAC_OVERRIDE).
    pub run_as: Option<AccountTemplate>,
    /// Fixed accounts for some users (user id → account name); checked before `run_as`.
    pub accounts: BTreeMap<UserId, AccountName>,
    /// Create a missing account on first login (system account, no password, no login shell,
    /// home mode 0700). Needs root.
    pub create_accounts: bool,
    /// Where created accounts get their home directory (`<home_base>/<account>`).
    pub home_base: PathBuf,
    /// Per-session resource limits.
    pub limits: ResourceLimits,
    /// Variables set from the verified identity (variable name → `name`, `email` or
    /// `groups`); absent when the identity has no such detail.
    pub claims_env: BTreeMap<EnvName, crate::identity::IdentityField>,
    /// A directory copied into each user's Hermes home on their first session (`.tmpl` files
    /// with `{user_id}`, `{name}`, `{email}` replaced); existing files are never overwritten.
    pub home_skeleton: Option<PathBuf>,
    /// A PTY session whose last client left keeps running this long, waiting for its user to
    /// come back ("0s": it ends with its client).
    #[serde(with = "humantime_serde")]
    pub detach_timeout: Duration,
    /// Lines of scrollback the gateway keeps per session (for reattaching).
    pub scrollback: usize,
    /// How programs are kept apart from the gateway and from each other.
    pub isolation: Isolation,
    /// What a sandboxed program may read and write.
    pub sandbox: SandboxConfig,
}

/// `[session] isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Every program runs in a Landlock sandbox (`[session.sandbox]`).
    #[default]
    Landlock,
    /// No sandbox: programs see whatever their account can reach. The operator's explicit
    /// choice for kernels without Landlock.
    None,
}

/// `[session.sandbox]`: the file system a sandboxed program reaches. Paths may contain
/// `{user_id}` as a whole component; relative ones are resolved against the config's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Readable and executable (beneath each path).
    pub read: Vec<Template>,
    /// Readable, writable and executable (beneath each path).
    pub write: Vec<Template>,
    /// Each user's own HOME (and TMPDIR beneath it) when programs share the gateway's account.
    pub home: Template,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let t = |s: &str| Template(s.to_owned());
        SandboxConfig {
            // What interpreters and their libraries need: the system, its configuration
            // (certificates, resolver, time zones), and the read-only kernel views.
            read: [
                "/usr",
                "/bin",
                "/sbin",
                "/lib",
                "/lib32",
                "/lib64",
                "/etc",
                "/opt",
                "/proc",
                "/sys",
                "/run/systemd/resolve",
            ]
            .into_iter()
            .map(t)
            .collect(),
            // The harmless devices, and /dev/tty and /dev/ptmx for the program's own terminals.
            // Not /dev/pts: another session's terminal there has the same owner, and reading
            // it would steal that user's keystrokes (the session's own is added by itself).
            // Not /dev/shm: it is shared by every program of the account.
            write: [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty",
                "/dev/ptmx",
            ]
            .into_iter()
            .map(t)
            .collect(),
            home: t("homes/{user_id}"),
        }
    }
}

/// `[session.limits]`: what one session's program (with everything it starts) may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceLimits {
    /// Memory, e.g. `"512MiB"`: the cgroup's `memory.max` when the gateway can create cgroups,
    /// else `RLIMIT_AS` (address space, per process).
    pub memory: Option<bytesize::ByteSize>,
    /// Processes and threads: the cgroup's `pids.max` when available; `RLIMIT_NPROC` (which
    /// counts all processes of the account, and is not enforced for root) otherwise.
    pub processes: Option<u64>,
    /// Open files per process (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// CPU time per process (`RLIMIT_CPU`; SIGXCPU, then SIGKILL a second later).
    #[serde(with = "humantime_serde")]
    pub cpu_time: Option<Duration>,
    /// Use a cgroup per session when the gateway can create them (default true). `false` keeps
    /// to rlimits, e.g. when another tool manages this host's cgroups.
    pub cgroups: bool,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            memory: None,
            processes: None,
            open_files: None,
            cpu_time: None,
            cgroups: true,
        }
    }
}

impl ResourceLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory.is_some()
            || self.processes.is_some()
            || self.open_files.is_some()
            || self.cpu_time.is_some()
    }
}

/// Longest account name `useradd` accepts.
pub const MAX_ACCOUNT_NAME: usize = 32;

/// Whether `s` is a portable Unix account name: `[a-z_][a-z0-9_.-]*`, at most 32 bytes, not
/// all digits (it would read as a uid).
pub fn is_account_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        && s.len() <= MAX_ACCOUNT_NAME
}

/// A Unix account name from the config (see [`is_account_name`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct AccountName(String);

impl AccountName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_account_name(&s) {
            Ok(AccountName(s))
        } else {
            Err(format!(
                "{s:?} is not a valid account name (lower-case letters, digits, '_', '.', '-', starting with a letter or '_', at most {MAX_ACCOUNT_NAME} characters)"
            ))
        }
    }
}

/// `run_as`: an account-name template that must contain `{user_id}` once, with a literal rest
/// that is valid in an account name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AccountTemplate(String);

impl AccountTemplate {
    /// The raw template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The text before and after `{user_id}`.
    pub fn parts(&self) -> (&str, &str) {
        self.0
            .split_once(USER_ID_PLACEHOLDER)
            .unwrap_or((self.0.as_str(), ""))
    }
}

impl TryFrom<String> for AccountTemplate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.matches(USER_ID_PLACEHOLDER).count() != 1 {
            return Err(format!(
                "{s:?}: run_as must contain {USER_ID_PLACEHOLDER} exactly once (one account per user; use [session.accounts] for fixed names)"
            ));
        }
        // The literal parts must themselves be valid where they stand.
        let sample = s.replace(USER_ID_PLACEHOLDER, "u");
        if !is_account_name(&sample) {
            return Err(format!(
                "{s:?}: outside {USER_ID_PLACEHOLDER}, an account name may hold only lower-case letters, digits, '_', '.', '-', and must start with a letter or '_'"
            ));
        }
        Ok(AccountTemplate(s))
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            command: Argv(vec!["hermes".into(), "--tui".into()]),
            identity_env: Vec::new(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            accept_env: vec![EnvPattern("LANG".into()), EnvPattern("LC_*".into())],
            workdir: None,
            exec: ExecPolicy::Refuse,
            kill_grace: Duration::from_secs(2),
            run_as: None,
            accounts: BTreeMap::new(),
            create_accounts: false,
            home_base: PathBuf::from("/home"),
            limits: ResourceLimits::default(),
            claims_env: BTreeMap::new(),
            home_skeleton: None,
            detach_timeout: Duration::ZERO,
            scrollback: 1000,
            isolation: Isolation::default(),
            sandbox: SandboxConfig::default(),
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

/// A non-empty argv list whose first word is non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Argv(pub Vec<String>);

impl TryFrom<Vec<String>> for Argv {
    type Error = String;
    fn try_from(v: Vec<String>) -> Result<Self, String> {
        match v.first() {
            None => Err("the command must name a program: the list is empty".into()),
            Some(p) if p.is_empty() => Err("the program name (first word) is empty".into()),
            _ if v.iter().any(|w| w.contains('\0')) => Err("a word contains a NUL byte".into()),
            _ => Ok(Argv(v)),
        }
    }
}

/// A valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvName(String);

impl EnvName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` is a valid environment variable name.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TryFrom<String> for EnvName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_env_name(&s) {
            Ok(EnvName(s))
        } else {
            Err(format!(
                "{s:?} is not a valid environment variable name (letters, digits and _, not starting with a digit)"
            ))
        }
    }
}

/// An environment name, or a prefix ending in `*` (`LC_*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvPattern(String);

impl EnvPattern {
    /// Whether `name` matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.0,
        }
    }
}

impl TryFrom<String> for EnvPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let stem = s.strip_suffix('*').unwrap_or(&s);
        if (stem.is_empty() && s == "*") || !is_env_name(stem) {
            Err(format!(
                "{s:?} is not a variable name or a prefix pattern such as \"LC_*\""
            ))
        } else {
            Ok(EnvPattern(s))
        }
    }
}

/// A string in which `{user_id}` is replaced by the user id; no other `{…}` is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Template(String);

/// The one placeholder templates know.
pub const USER_ID_PLACEHOLDER: &str = "{user_id}";

impl Template {
    /// The raw template text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether the template mentions `{user_id}`.
    pub fn uses_user_id(&self) -> bool {
        self.0.contains(USER_ID_PLACEHOLDER)
    }
    /// The text with every `{user_id}` replaced by `value`. Callers pass only validated user ids
    /// (see `identity::UserId`), which can never contain `/` or be `.`/`..`.
    pub fn expand(&self, value: &str) -> String {
        self.0.replace(USER_ID_PLACEHOLDER, value)
    }
}

impl TryFrom<String> for Template {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.contains('\0') {
            return Err("the value contains a NUL byte".into());
        }
        let rest = s.replace(USER_ID_PLACEHOLDER, "");
        if rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "{s:?}: the only placeholder is {USER_ID_PLACEHOLDER} (braces are not allowed otherwise)"
            ));
        }
        Ok(Template(s))
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
        let invalid = |message: String| ConfigError::Invalid {
            location: origin.to_owned(),
            message,
        };
        if let Some(w) = &self.session.workdir {
            if w.as_str().is_empty() {
                return Err(invalid("[session] workdir: must not be empty".into()));
            }
        }
        for name in &self.session.identity_env {
            if self.session.env.contains_key(name) {
                return Err(invalid(format!(
                    "[session.env] {}: this name is in [session] identity_env; identity variables are set by the gateway only",
                    name.as_str()
                )));
            }
        }
        for name in self.session.claims_env.keys() {
            let n = name.as_str();
            if n == IDENTITY_VAR
                || self.session.identity_env.contains(name)
                || self.session.env.contains_key(name)
                || ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TMPDIR"].contains(&n)
                || n.starts_with("LD_")
            {
                return Err(invalid(format!(
                    "[session] claims_env: {n} is set by the gateway or [session] already; pick another name (e.g. HERMES_DASHBOARD_USER_NAME)"
                )));
            }
        }
        if self.session.env.keys().any(|k| k.as_str() == IDENTITY_VAR) {
            return Err(invalid(format!(
                "[session.env] {IDENTITY_VAR}: identity variables are set by the gateway only"
            )));
        }
        if let Some(o) = &self.oidc {
            if o.client_id.is_empty() {
                return Err(invalid("[oidc] client_id: must not be empty".into()));
            }
            if o.user_id_claim.is_empty() {
                return Err(invalid("[oidc] user_id_claim: must not be empty".into()));
            }
            if !o.scopes.iter().any(|s| s == "openid") {
                return Err(invalid(
                    "[oidc] scopes: must include \"openid\" (the ID token carries the identity)"
                        .into(),
                ));
            }
            if o.max_pending == 0 || o.max_pending_per_ip == 0 {
                return Err(invalid(
                    "[oidc] max_pending, max_pending_per_ip: must be at least 1".into(),
                ));
            }
        }
        if self.session.create_accounts
            && self.session.run_as.is_none()
            && self.session.accounts.is_empty()
        {
            return Err(invalid(
                "[session] create_accounts: needs run_as or [session.accounts] (it creates the accounts they name)".into(),
            ));
        }
        if !self.session.home_base.is_absolute() {
            return Err(invalid(
                "[session] home_base: must be an absolute path".into(),
            ));
        }
        let l = &self.session.limits;
        if l.memory.is_some_and(|m| m.as_u64() < 16 << 20) {
            return Err(invalid(
                "[session.limits] memory: at least 16MiB (no program starts with less)".into(),
            ));
        }
        if l.processes == Some(0) || l.open_files.is_some_and(|n| n < 16) {
            return Err(invalid(
                "[session.limits] processes must be at least 1 and open_files at least 16".into(),
            ));
        }
        if l.cpu_time.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(invalid("[session.limits] cpu_time: at least 1s".into()));
        }
        let sb = &self.session.sandbox;
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
                return Err(invalid(format!(
                    "[session.sandbox] {key}: {:?}: {USER_ID_PLACEHOLDER} must be a whole path component (as in \"/srv/hermes/{USER_ID_PLACEHOLDER}\")",
                    t.as_str()
                )));
            }
        }
        if !sb.home.uses_user_id() {
            return Err(invalid(format!(
                "[session.sandbox] home: {:?} must contain {USER_ID_PLACEHOLDER} (each user gets their own)",
                sb.home.as_str()
            )));
        }
        if self.state.backend == StateBackend::Redis && self.state.redis_url.is_none() {
            return Err(invalid(
                "[state] redis_url: required with backend = \"redis\"".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid(
                "[limits] max_connections: must be at least 1".into(),
            ));
        }
        if let Some(w) = &self.web {
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
                return Err(invalid(format!(
                    "[web] {key}: too small (a zero would refuse every browser)"
                )));
            }
        }
        if self.limits.max_channels_per_connection == 0 {
            return Err(invalid(
                "[limits] max_channels_per_connection: must be at least 1".into(),
            ));
        }
        if !(16..=128).contains(&self.limits.ipv6_prefix) {
            return Err(invalid(format!(
                "[limits] ipv6_prefix: {} is not a prefix length from 16 to 128",
                self.limits.ipv6_prefix
            )));
        }
        if self.limits.login_grace.is_zero() {
            return Err(invalid("[limits] login_grace: must be more than 0".into()));
        }
        if self.ssh.inactivity_timeout.is_zero() {
            return Err(invalid(
                "[ssh] inactivity_timeout: must be more than 0 (use a large value such as \"30d\" to effectively disable it)".into(),
            ));
        }
        Ok(())
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
        assert_eq!(c.session.command.0, vec!["hermes", "--tui"]);
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
        let text = include_str!("../gateway.toml");
        Config::parse(text, "gateway.toml").unwrap();
    }
}
