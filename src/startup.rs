//! Starting the gateway: checking the configuration, and assembling the parts it names —
//! state, sign-in, fronts, operations — into a running server with its shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use arc_swap::ArcSwap;
use hermes_ssh_gateway::config::Config;
use hermes_ssh_gateway::identity::certs::PrincipalMap;
use hermes_ssh_gateway::identity::key_policy::{KeyPolicy, KeyPolicySettings};
use hermes_ssh_gateway::identity::limits::PendingSlots;
use hermes_ssh_gateway::identity::namespace::{Namespaces, EDITABLE_CLAIMS};
use hermes_ssh_gateway::identity::oidc::Oidc;
use hermes_ssh_gateway::identity::shared::SharedState;
use hermes_ssh_gateway::identity::{KeyRegistry, UserId};
use hermes_ssh_gateway::launcher::{sandbox, skeleton, LaunchSpec};
use hermes_ssh_gateway::ops::{admin, directory, metrics, AuditLog, Ops, Shutdown};
use hermes_ssh_gateway::ssh::proxy::{ProxyMode, ProxyPolicy};
use hermes_ssh_gateway::ssh::{
    hostkey, ConnectionLimits, SessionLimits, SshContext, SshServer, SshSettings, WebLink,
};
use hermes_ssh_gateway::web::{SessionStore, WebContext, WebLimits};
use tokio_util::sync::CancellationToken;

pub(crate) fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let snap = hermes_ssh_gateway::identity::keys::KeySnapshot::load(&config.ssh.users_dir);
    for p in &snap.problems {
        println!("{p}");
    }
    if let Err(e) = key_policy(&config) {
        println!("error: {e}");
        anyhow::bail!("serve would refuse to start with this configuration");
    }
    if let Some(o) = config
        .oidc
        .as_ref()
        .filter(|o| EDITABLE_CLAIMS.contains(&o.user_id_claim.as_str()))
    {
        println!(
            "warning: [oidc] user_id_claim = {:?} is a claim users can change themselves at many identity providers; prefer \"sub\" (or a verified \"email\")",
            o.user_id_claim
        );
    }
    if let Some(w) = config.oidc.as_ref().and_then(|o| o.recheck_warning()) {
        println!("warning: {w}");
    }
    let policy = hermes_ssh_gateway::launcher::AccountPolicy::from_config(&config.session);
    if policy.switches_users() {
        if let Err(e) =
            hermes_ssh_gateway::launcher::account::check_privileges(config.session.create_accounts)
        {
            println!("warning: run as this user, serve would refuse to start: {e}");
        }
    }
    if let Some(p) = config
        .session
        .home_skeleton
        .as_deref()
        .and_then(skeleton::problem)
    {
        println!("error: {p}");
        anyhow::bail!("serve would refuse to start with this configuration");
    }
    match sandbox_plan(&config, path) {
        Ok(plan) => {
            for w in &plan.warnings {
                println!("warning: {w}");
            }
            println!("isolation: {}", plan.summary);
        }
        Err(e) => {
            println!("error: {e}");
            anyhow::bail!("serve would refuse to start with this configuration");
        }
    }
    println!(
        "{}: ok; {} users with {} keys in {}",
        path.display(),
        snap.user_count(),
        snap.key_count(),
        config.ssh.users_dir.display()
    );
    Ok(())
}

pub(crate) async fn serve(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let host_key = host_key(&config)?;
    guard_process();
    let shutdown = Shutdown::default();
    // Background work (watchers, sweepers, retries) stops with the last stage.
    let background = shutdown.terminate.clone();
    let registry = KeyRegistry::open(&config.ssh.users_dir)
        .with_context(|| format!("users_dir {}", config.ssh.users_dir.display()))?;
    registry
        .watch(Duration::from_millis(100), background.clone())
        .with_context(|| format!("watching {}", config.ssh.users_dir.display()))?;
    let key_policy = Arc::new(key_policy(&config)?);
    session_privileges(&config.session)?;
    hermes_ssh_gateway::launcher::confine::init(&config.session.limits);
    let launch = Arc::new(ArcSwap::from_pointee(launch_spec(&config, &config_path)?));
    warn_if_program_missing(&launch.load());
    let ops = open_ops(&config, &background)?;

    let listener = tokio::net::TcpListener::bind(config.ssh.listen)
        .await
        .with_context(|| format!("[ssh] listen = \"{}\": cannot bind", config.ssh.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening; try: ssh -p {} {}", addr.port(), addr.ip());
    let mut tasks = Vec::new();
    if let Some(m) = &config.metrics {
        let l = tokio::net::TcpListener::bind(m.listen)
            .await
            .with_context(|| format!("[metrics] listen = \"{}\": cannot bind", m.listen))?;
        tracing::info!(addr = %l.local_addr()?, "metrics listening");
        tasks.push(tokio::spawn(metrics::serve(
            l,
            ops.clone(),
            background.clone(),
        )));
    }

    let shared = SharedState::open((&config.state).into(), (&config.limits).into(), &background)?;
    // One set of sessions for both fronts (a session started in one can be attached from the
    // other) and the operator's console.
    let hub = Arc::new(hermes_ssh_gateway::sessions::Hub::default());
    let admin_listener = admin::bind(&config.admin.socket)
        .with_context(|| format!("[admin] socket {}", config.admin.socket.display()))?;
    let admin_state = admin::AdminState {
        sessions: ops.sessions.clone(),
        enrollments: shared.enrollments.clone(),
        ops: ops.clone(),
        hub: hub.clone(),
    };
    let operators = admin::Operators::new(&config.admin.users, &config.admin.groups)
        .map_err(anyhow::Error::msg)?;
    tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        background.clone(),
    ));
    if let Some(r) = &shared.redis {
        join_cluster(r, config.state.node_id.as_deref(), &ops, &background);
    }
    let parts = Parts {
        namespaces: Arc::new(Namespaces::new(
            registry.clone(),
            linked_key_users(&config)?,
        )),
        signin: SignIn::start(&config, &shared, &background)?,
        launch,
        ops,
        shared,
        hub,
        shutdown: shutdown.clone(),
        detach: hermes_ssh_gateway::sessions::DetachPolicy {
            timeout: config.session.detach_timeout,
            scrollback: config.session.scrollback,
            max_per_user: config.limits.max_detached_per_user,
        },
        recording_dir: config.recording.as_ref().map(|r| r.dir.clone()),
        admin: Arc::new(hermes_ssh_gateway::ssh::AdminAccess {
            state: admin_state,
            operators,
        }),
    };
    let web_link = match &config.web {
        Some(w) => {
            let (link, task) = start_web(w, &config, &parts).await?;
            tasks.push(task);
            Some(link)
        }
        None => None,
    };
    let ops = parts.ops.clone();
    let launch = parts.launch.clone();
    let conn_limits = ConnectionLimits {
        max_connections: config.limits.max_connections,
        login_grace: config.limits.login_grace,
        bans: parts.shared.bans.clone(),
        proxy: proxy_policy(&config.ssh),
    };
    let server = SshServer::new(
        host_key,
        ssh_context(&config, (registry.clone(), key_policy), parts, web_link),
        &SshSettings {
            inactivity_timeout: config.ssh.inactivity_timeout,
            keepalive_interval: Some(config.ssh.keepalive_interval).filter(|d| !d.is_zero()),
        },
    );

    let (stages, sessions, drain) = (
        shutdown.clone(),
        ops.sessions.clone(),
        config.limits.drain_timeout,
    );
    tokio::spawn(async move {
        signals(&config_path, &registry, &launch).await;
        stages.drain(&sessions, drain).await;
    });
    server.serve(listener, conn_limits, shutdown.clone()).await;
    shutdown
        .finish(&ops.sessions, config.session.kill_grace)
        .await;
    for t in tasks {
        t.await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// `[ssh] proxy_protocol` and `trusted_proxies`.
fn proxy_policy(ssh: &hermes_ssh_gateway::config::SshConfig) -> ProxyPolicy {
    use hermes_ssh_gateway::config::ProxyProtocol;
    let mode = match ssh.proxy_protocol {
        ProxyProtocol::Off => ProxyMode::Off,
        ProxyProtocol::V1 => ProxyMode::V1,
        ProxyProtocol::V2 => ProxyMode::V2,
        ProxyProtocol::Any => ProxyMode::Any,
    };
    let trusted: Vec<String> = ssh.trusted_proxies.iter().map(|p| p.0.clone()).collect();
    ProxyPolicy::new(mode, &trusted)
}

/// Certificates, revocation and security-key rules; a bad CA or revoked-keys file stops the
/// start with its file and line.
fn key_policy(config: &Config) -> anyhow::Result<KeyPolicy> {
    let ssh = &config.ssh;
    let policy = KeyPolicy::open(KeyPolicySettings {
        trusted_user_ca_keys: ssh.trusted_user_ca_keys.as_deref(),
        revoked_keys: ssh.revoked_keys.as_deref(),
        principal_map: PrincipalMap {
            strip_prefix: ssh.cert_principal_map.strip_prefix.clone(),
            strip_suffix: ssh.cert_principal_map.strip_suffix.clone(),
        },
        cert_leeway: ssh.cert_leeway,
        require_user_presence: ssh.require_user_presence,
    })
    .map_err(|e| anyhow::anyhow!("[ssh] {e}"))?;
    if policy.certificates_enabled() {
        tracing::info!("user certificates of the CAs in trusted_user_ca_keys are accepted");
    }
    Ok(policy)
}

/// The host key, loaded or generated (and said which, with its fingerprint).
fn host_key(config: &Config) -> anyhow::Result<russh::keys::PrivateKey> {
    let (key, origin) = hostkey::load_or_generate(&config.ssh.host_key)?;
    tracing::info!(
        path = %config.ssh.host_key.display(),
        fingerprint = %hostkey::fingerprint(&key),
        generated = origin == hostkey::Origin::Generated,
        "host key"
    );
    Ok(key)
}

/// What protects the gateway process itself, before any program can start.
fn guard_process() {
    // Programs of the gateway's own account can then neither ptrace it nor read its /proc
    // files (environment, memory, open files): only root with CAP_SYS_PTRACE can.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the gateway non-dumpable");
    }
    // Whatever ends this process, its programs end too.
    if let Err(e) = hermes_ssh_gateway::launcher::reaper::start() {
        tracing::error!(error = %e, "cannot start the reaper: programs would outlive a crash of the gateway");
    }
    hermes_ssh_gateway::ops::memory::raise_open_files_limit();
}

/// The audit log, the recording directory and the metrics, and the heap trimmer.
fn open_ops(config: &Config, background: &CancellationToken) -> anyhow::Result<Arc<Ops>> {
    let audit = match &config.audit {
        Some(a) => Some(
            AuditLog::open(&a.path)
                .with_context(|| format!("[audit] path {}", a.path.display()))?,
        ),
        None => None,
    };
    if let Some(r) = &config.recording {
        hermes_ssh_gateway::fsutil::private_dir(&r.dir)
            .with_context(|| format!("[recording] dir {}", r.dir.display()))?;
    }
    let ops = Ops::new(audit);
    hermes_ssh_gateway::ops::memory::spawn_trimmer(
        ops.closes.clone(),
        Duration::from_secs(5),
        background.clone(),
    );
    Ok(ops)
}

/// With state in Redis, this node publishes its sessions for the others (and counts theirs).
fn join_cluster(
    redis: &Arc<hermes_ssh_gateway::identity::redis::Redis>,
    node_id: Option<&str>,
    ops: &Arc<Ops>,
    background: &CancellationToken,
) {
    let node = directory::node_id(node_id);
    tracing::info!(node, "shared state in Redis");
    ops.sessions
        .attach_directory(Arc::new(directory::SessionDirectory::new(
            redis.clone(),
            node,
        )));
    let gauge = ops.clone();
    ops.sessions.spawn_heartbeat(background.clone(), move |n| {
        gauge.metrics.set_cluster_sessions(n)
    });
}

/// Device sign-in, when `[oidc]` is configured.
struct SignIn {
    oidc: Option<Arc<Oidc>>,
    limiter: Option<Arc<dyn PendingSlots>>,
    enroll_ttl: Duration,
    pending_timeout: Duration,
    recheck_interval: Duration,
}

impl SignIn {
    /// Starts discovering the IdP (in the background: key logins work meanwhile).
    fn start(
        config: &Config,
        shared: &SharedState,
        background: &CancellationToken,
    ) -> anyhow::Result<SignIn> {
        let Some(o) = &config.oidc else {
            return Ok(SignIn {
                oidc: None,
                limiter: None,
                enroll_ttl: Duration::ZERO,
                pending_timeout: Duration::from_secs(600),
                recheck_interval: Duration::ZERO,
            });
        };
        let oidc = Oidc::new(o.into())?;
        oidc.spawn_discovery(background.clone());
        Ok(SignIn {
            oidc: Some(oidc),
            limiter: Some(shared.pending_slots(
                o.max_pending,
                o.max_pending_per_ip,
                o.pending_timeout,
            )),
            enroll_ttl: o.enroll_ttl,
            pending_timeout: o.pending_timeout,
            recheck_interval: o.recheck_interval,
        })
    }
}

/// What both fronts are built from.
struct Parts {
    namespaces: Arc<Namespaces>,
    signin: SignIn,
    launch: Arc<ArcSwap<LaunchSpec>>,
    ops: Arc<Ops>,
    shared: SharedState,
    hub: Arc<hermes_ssh_gateway::sessions::Hub>,
    shutdown: Shutdown,
    detach: hermes_ssh_gateway::sessions::DetachPolicy,
    recording_dir: Option<PathBuf>,
    admin: Arc<hermes_ssh_gateway::ssh::AdminAccess>,
}

/// Binds and starts the web front; the SSH front's `link` needs what it returns.
async fn start_web(
    w: &hermes_ssh_gateway::config::WebConfig,
    config: &Config,
    p: &Parts,
) -> anyhow::Result<(WebLink, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let web_listener = tokio::net::TcpListener::bind(w.listen)
        .await
        .with_context(|| format!("[web] listen = \"{}\": cannot bind", w.listen))?;
    tracing::info!(addr = %web_listener.local_addr()?, public_url = %w.public_url.0, "web front listening");
    let web_ctx = Arc::new(WebContext {
        namespaces: p.namespaces.clone(),
        public_url: w.public_url.0.clone(),
        oidc: p.signin.oidc.clone(),
        tickets: p.shared.tickets.clone(),
        sessions: match &p.shared.redis {
            Some(r) => SessionStore::shared(r.clone()),
            None => SessionStore::new(),
        },
        launch: p.launch.clone(),
        ops: p.ops.clone(),
        shutdown: p.shutdown.clone(),
        max_sessions_per_user: config.limits.max_sessions_per_user,
        session_ttl: w.session_ttl,
        ticket_ttl: w.ticket_ttl,
        limits: WebLimits {
            max_connections: w.max_connections,
            max_connections_per_address: w.max_connections_per_address,
            header_timeout: w.header_timeout,
            request_timeout: w.request_timeout,
            ipv6_prefix: config.limits.ipv6_prefix,
        },
        max_logins_per_address: w.max_logins_per_address,
        trusted_proxies: Arc::new(arc_swap::ArcSwap::from_pointee(
            w.trusted_proxies
                .iter()
                .map(|p| p.0.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )),
        bans: p.shared.bans.clone(),
        max_message_size: usize::try_from(w.max_message_size.as_u64()).unwrap_or(usize::MAX),
        hub: p.hub.clone(),
        detach: p.detach,
        idle_timeout: config.limits.idle_timeout,
        recording_dir: p.recording_dir.clone(),
    });
    let task = tokio::spawn(hermes_ssh_gateway::web::serve(
        web_listener,
        web_ctx,
        p.shutdown.draining.clone(),
    ));
    let link = WebLink {
        tickets: p.shared.tickets.clone(),
        public_url: w.public_url.0.clone(),
    };
    Ok((link, task))
}

/// The SSH front's context.
fn ssh_context(
    config: &Config,
    (registry, key_policy): (Arc<KeyRegistry>, Arc<KeyPolicy>),
    p: Parts,
    web_link: Option<WebLink>,
) -> SshContext {
    SshContext {
        registry,
        key_policy,
        admin: p.admin,
        namespaces: p.namespaces,
        launch: p.launch,
        ops: p.ops,
        limits: SessionLimits {
            max_sessions_per_user: config.limits.max_sessions_per_user,
            idle_timeout: config.limits.idle_timeout,
            max_channels_per_connection: config.limits.max_channels_per_connection,
        },
        shutdown: p.shutdown,
        recording_dir: p.recording_dir,
        bans: p.shared.bans,
        accept_env: config.session.accept_env.clone(),
        exec_policy: config.session.exec,
        enrollments: p.shared.enrollments,
        oidc: p.signin.oidc,
        limiter: p.signin.limiter,
        enroll_ttl: p.signin.enroll_ttl,
        recheck_interval: p.signin.recheck_interval,
        hub: p.hub,
        tickets: p.shared.tickets,
        detach: p.detach,
        pending_timeout: p.signin.pending_timeout,
        web_link,
    }
}

/// Waits for SIGTERM or SIGINT; on SIGHUP reloads the key files and the `[session]` section
/// (a bad new config is reported and the running one stays).
async fn signals(
    config_path: &std::path::Path,
    registry: &KeyRegistry,
    launch: &ArcSwap<LaunchSpec>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                registry.reload();
                match Config::load(config_path) {
                    Ok(new) => {
                        let spec = session_privileges(&new.session)
                            .and_then(|()| launch_spec(&new, config_path));
                        let spec = match spec {
                            Ok(spec) => spec,
                            Err(e) => {
                                tracing::error!("configuration reload refused, keeping the running configuration: {e}");
                                continue;
                            }
                        };
                        hermes_ssh_gateway::launcher::confine::init(&new.session.limits);
                        launch.store(Arc::new(spec));
                        tracing::info!("configuration reloaded ([session] and key files; other sections apply at the next restart)");
                    }
                    Err(e) => tracing::error!("configuration reload failed, keeping the running configuration: {e}"),
                }
            }
        }
    }
}

/// `[oidc] linked_key_users` as user ids.
fn linked_key_users(config: &Config) -> anyhow::Result<Vec<UserId>> {
    let Some(o) = &config.oidc else {
        return Ok(Vec::new());
    };
    if let Some(w) = o.recheck_warning() {
        tracing::warn!("{w}");
    }
    if EDITABLE_CLAIMS.contains(&o.user_id_claim.as_str()) {
        tracing::warn!("[oidc] user_id_claim = {:?} is a claim users can change themselves at many identity providers: two people could end up with the same user id over time; prefer \"sub\" (or a verified \"email\")", o.user_id_claim);
    }
    o.linked_key_users
        .iter()
        .map(|u| {
            UserId::parse(u).map_err(|e| anyhow::anyhow!("[oidc] linked_key_users: {u:?}: {e}"))
        })
        .collect()
}

/// How programs are isolated, decided from the whole config: the paths no program may reach,
/// and whether more than one person can sign in.
fn sandbox_plan(
    config: &Config,
    config_path: &std::path::Path,
) -> Result<sandbox::Plan, sandbox::SandboxError> {
    let users =
        hermes_ssh_gateway::identity::keys::KeySnapshot::load(&config.ssh.users_dir).user_count();
    let account = hermes_ssh_gateway::launcher::Account::current();
    let shared =
        !hermes_ssh_gateway::launcher::AccountPolicy::from_config(&config.session).switches_users();
    sandbox::plan(
        &config.session,
        shared.then_some(account.name.as_str()),
        config.protected_paths(config_path),
        config.oidc.is_some() || users > 1,
    )
}

/// The launch settings, with the sandbox the plan decided on (logged).
fn launch_spec(config: &Config, config_path: &std::path::Path) -> anyhow::Result<LaunchSpec> {
    if let Some(p) = config
        .session
        .home_skeleton
        .as_deref()
        .and_then(skeleton::problem)
    {
        anyhow::bail!("{p}");
    }
    let plan = sandbox_plan(config, config_path)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!("{}", plan.summary);
    let mut spec = LaunchSpec::from_config(&config.session);
    spec.sandbox = plan.sandbox.map(Arc::new);
    Ok(spec)
}

/// Tells the operator at start, not at the first login, that the program is not installed.
fn warn_if_program_missing(launch: &LaunchSpec) {
    if let Some(e) = launch.program_problem() {
        tracing::warn!("[session] command cannot be started: {e}; users will see an explanation screen until it is installed");
    }
}

/// Per-user accounts need the right to switch users; say so at start rather than at each login.
fn session_privileges(session: &hermes_ssh_gateway::config::SessionConfig) -> anyhow::Result<()> {
    let policy = hermes_ssh_gateway::launcher::AccountPolicy::from_config(session);
    if policy.switches_users() {
        hermes_ssh_gateway::launcher::account::check_privileges(session.create_accounts)
            .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
        tracing::info!(
            run_as = session.run_as.as_ref().map(|t| t.as_str()),
            mapped = session.accounts.len(),
            create_accounts = session.create_accounts,
            "programs run under per-user accounts"
        );
    }
    let l = &session.limits;
    if l.processes.is_some()
        && !policy.switches_users()
        && !(l.cgroups && hermes_ssh_gateway::launcher::confine::cgroups_enforce_pids())
    {
        tracing::warn!("[session.limits] processes is not enforced: without a writable cgroup it needs run_as (RLIMIT_NPROC counts per account, and never for root)");
    }
    Ok(())
}
