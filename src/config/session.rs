//! `[session]`: the program, its environment, accounts, sandbox and limits, and the
//! checked value types they are made of.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::identity::UserId;

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

/// A non-empty argv list whose first word is non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Argv(Vec<String>);

impl Argv {
    /// The program: the first word, never empty.
    pub fn program(&self) -> &str {
        &self.0[0]
    }

    /// Every word, the program first.
    pub fn words(&self) -> &[String] {
        &self.0
    }

    /// The words joined by spaces, for listings and logs.
    pub fn display(&self) -> String {
        self.0.join(" ")
    }
}

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
pub struct Template(pub(super) String);

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
