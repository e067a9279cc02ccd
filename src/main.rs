//! `hermes-ssh-gateway`: wiring only. Loads the config, builds the shared parts, starts the SSH
//! front and waits for a signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use arc_swap::ArcSwap;
use hermes_ssh_gateway::config::Config;
use hermes_ssh_gateway::config::StateBackend;
use hermes_ssh_gateway::identity::claims::ClaimPolicy;
use hermes_ssh_gateway::identity::limits::{
    BanList, Bans, ByNetwork, PendingLimiter, PendingSlots,
};
use hermes_ssh_gateway::identity::namespace::{Namespaces, EDITABLE_CLAIMS};
use hermes_ssh_gateway::identity::oidc::{Oidc, OidcSettings};
use hermes_ssh_gateway::identity::redis::{
    Redis, RedisBans, RedisEnrollments, RedisPending, RedisTickets, SessionDirectory,
};
use hermes_ssh_gateway::identity::store::{EnrollmentStore, FileEnrollmentStore};
use hermes_ssh_gateway::identity::tickets::{MemoryTicketStore, TicketStore};
use hermes_ssh_gateway::identity::{KeyRegistry, UserId};
use hermes_ssh_gateway::launcher::{sandbox, skeleton, LaunchSpec};
use hermes_ssh_gateway::ops::{admin, metrics, AuditLog, Ops, Shutdown};
use hermes_ssh_gateway::ssh::{
    hostkey, ConnectionLimits, SessionLimits, SshContext, SshServer, SshSettings, WebLink,
};
use hermes_ssh_gateway::web::{SessionStore, WebContext, WebLimits};

/// SSH gateway that runs a terminal program (by default `hermes --tui`) and tells it who is
/// typing, through HERMES_DASHBOARD_USER_ID.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Path of the configuration file. Relative paths inside it are resolved against its
    /// directory.
    #[arg(
        long,
        short = 'c',
        value_name = "PATH",
        default_value = "gateway.toml",
        global = true
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
    /// Check the configuration file and the key files, print what is wrong, and exit.
    CheckConfig,
    /// A small terminal program that shows the identity variables and terminal size it
    /// received; use it as `[session] command` to try the gateway without Hermes.
    DemoTui,
    /// The running gateway's sessions, live (like `top`): select one and end it.
    Sessions {
        /// Print the list once as JSON (for scripts) instead of the live view.
        #[arg(long)]
        json: bool,
        /// Watch this session (the ID column) read-only; `q` or Ctrl-] stops.
        #[arg(long, value_name = "ID", conflicts_with = "json")]
        watch: Option<u64>,
        /// The admin socket (default: `[admin] socket` of the config file).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// The keys enrolled by device sign-ins, as JSON; `revoke SHA256:…` removes one. Talks to
    /// the running gateway over the admin socket.
    Enrollments {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
        /// The admin socket (default: `[admin] socket` of the config file).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// `revoke SHA256:…`
        action: Vec<String>,
    },
    /// Internal: the watcher that ends the programs of a gateway that died (started by the
    /// gateway itself; reads its pipe).
    #[command(hide = true)]
    Reaper,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Reaper) => {
            std::process::ExitCode::from(hermes_ssh_gateway::launcher::reaper::run() as u8)
        }
        Some(Command::DemoTui) => match hermes_ssh_gateway::tui::demo::run() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo-tui: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Some(Command::Enrollments {
            user,
            socket,
            action,
        }) => {
            let request = match (action.as_slice(), &user) {
                ([], None) => "enrollments".to_owned(),
                ([], Some(u)) => format!("enrollments {u}"),
                ([verb, fp], _) if verb == "revoke" => format!("revoke {fp}"),
                _ => {
                    eprintln!(
                        "usage: hermes-ssh-gateway enrollments [--user USER] [revoke SHA256:…]"
                    );
                    return std::process::ExitCode::from(2);
                }
            };
            let socket = match socket
                .map(Ok)
                .unwrap_or_else(|| Config::load(&cli.config).map(|c| c.admin.socket))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e} (or name the socket with --socket)");
                    return std::process::ExitCode::from(2);
                }
            };
            match hermes_ssh_gateway::ops::admin::request_blocking(&socket, &request) {
                Ok(answer) => {
                    println!("{answer}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: admin socket {}: {e}", socket.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some(Command::Sessions {
            json,
            watch,
            socket,
        }) => {
            let socket = match socket {
                Some(s) => s,
                None => match Config::load(&cli.config) {
                    Ok(c) => c.admin.socket,
                    Err(e) => {
                        eprintln!("error: {e} (or name the socket with --socket)");
                        return std::process::ExitCode::from(2);
                    }
                },
            };
            let result = if json {
                hermes_ssh_gateway::tui::admin::fetch(&socket).map(|rows| {
                    println!("{}", serde_json::to_string(&rows).unwrap_or_default());
                })
            } else if let Some(id) = watch {
                hermes_ssh_gateway::tui::admin::watch_in_raw_mode(&socket, id)
            } else {
                hermes_ssh_gateway::tui::admin::run(&socket)
            };
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: admin socket {}: {e}", socket.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some(Command::CheckConfig) => match check_config(&cli.config) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
        None | Some(Command::Serve) => {
            let config = match Config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_logging(&config.logging.level);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(config, cli.config.clone())) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let snap = hermes_ssh_gateway::identity::keys::KeySnapshot::load(&config.ssh.users_dir);
    for p in &snap.problems {
        println!("{p}");
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

async fn serve(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let (host_key, origin) = hostkey::load_or_generate(&config.ssh.host_key)?;
    tracing::info!(
        path = %config.ssh.host_key.display(),
        fingerprint = %hostkey::fingerprint(&host_key),
        generated = origin == hostkey::Origin::Generated,
        "host key"
    );

    // Programs of the gateway's own account can then neither ptrace it nor read its /proc
    // files (environment, memory, open files): only root with CAP_SYS_PTRACE can.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the gateway non-dumpable");
    }
    // Before any program can start: whatever ends this process, its programs end too.
    if let Err(e) = hermes_ssh_gateway::launcher::reaper::start() {
        tracing::error!(error = %e, "cannot start the reaper: programs would outlive a crash of the gateway");
    }
    hermes_ssh_gateway::ops::memory::raise_open_files_limit();

    let shutdown = Shutdown::default();
    // Background work (watchers, sweepers, retries) stops with the last stage.
    let background = shutdown.terminate.clone();
    let registry = KeyRegistry::open(&config.ssh.users_dir)
        .with_context(|| format!("users_dir {}", config.ssh.users_dir.display()))?;
    registry
        .watch(Duration::from_millis(100), background.clone())
        .with_context(|| format!("watching {}", config.ssh.users_dir.display()))?;

    session_privileges(&config.session)?;
    hermes_ssh_gateway::launcher::confine::init(&config.session.limits);
    let launch = Arc::new(ArcSwap::from_pointee(launch_spec(&config, &config_path)?));
    warn_if_program_missing(&launch.load());

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

    let settings = SshSettings {
        inactivity_timeout: config.ssh.inactivity_timeout,
        keepalive_interval: Some(config.ssh.keepalive_interval).filter(|d| !d.is_zero()),
    };
    // Shared state: this process (and a file), or Redis for several nodes.
    let redis = match (&config.state.backend, &config.state.redis_url) {
        (StateBackend::Redis, Some(url)) => Some(Redis::open(url).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let enrollments: Arc<dyn EnrollmentStore> = match &redis {
        Some(r) => Arc::new(RedisEnrollments(r.clone())),
        None => Arc::new(
            FileEnrollmentStore::open(&config.state.dir)
                .with_context(|| format!("[state] dir {}", config.state.dir.display()))?,
        ),
    };
    // One set of sessions for both fronts (a session started in one can be attached from the
    // other) and the operator's console.
    let hub = Arc::new(hermes_ssh_gateway::sessions::Hub::default());
    let admin_listener = admin::bind(&config.admin.socket)
        .with_context(|| format!("[admin] socket {}", config.admin.socket.display()))?;
    tokio::spawn(admin::serve(
        admin_listener,
        admin::AdminState {
            sessions: ops.sessions.clone(),
            enrollments: enrollments.clone(),
            ops: ops.clone(),
            hub: hub.clone(),
        },
        background.clone(),
    ));
    if let Some(r) = &redis {
        let node = config.state.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}", std::process::id())
        });
        tracing::info!(node, "shared state in Redis");
        ops.sessions
            .attach_directory(Arc::new(SessionDirectory::new(r.clone(), node)));
        let gauge = ops.clone();
        ops.sessions.spawn_heartbeat(background.clone(), move |n| {
            gauge.metrics.set_cluster_sessions(n)
        });
    }
    let namespaces = Arc::new(Namespaces::new(
        registry.clone(),
        linked_key_users(&config)?,
    ));
    let (oidc, limiter, enroll_ttl, pending_timeout, recheck_interval) = match &config.oidc {
        Some(o) => {
            let oidc = Oidc::new(OidcSettings {
                issuer: o.issuer.0.as_str().trim_end_matches('/').to_owned(),
                client_id: o.client_id.clone(),
                client_secret: o.client_secret.clone(),
                scopes: o.scopes.clone(),
                policy: ClaimPolicy {
                    user_id_claim: o.user_id_claim.clone(),
                    user_id_prefix: o.user_id_prefix.clone(),
                    groups_claim: o.groups_claim.clone(),
                    allowed_groups: o.allowed_groups.clone(),
                    allowed_email_domains: o.allowed_email_domains.clone(),
                },
                leeway: o.leeway,
            })
            .map_err(anyhow::Error::msg)?;
            oidc.spawn_discovery(background.clone());
            let limiter: Arc<dyn PendingSlots> = match &redis {
                Some(r) => Arc::new(RedisPending::new(
                    r.clone(),
                    o.max_pending,
                    o.max_pending_per_ip,
                    o.pending_timeout,
                )),
                None => Arc::new(PendingLimiter::new(o.max_pending, o.max_pending_per_ip)),
            };
            let limiter: Arc<dyn PendingSlots> =
                Arc::new(ByNetwork::new(limiter, config.limits.ipv6_prefix));
            (
                Some(oidc),
                Some(limiter),
                o.enroll_ttl,
                o.pending_timeout,
                o.recheck_interval,
            )
        }
        None => (
            None,
            None,
            Duration::ZERO,
            Duration::from_secs(600),
            Duration::ZERO,
        ),
    };
    let tickets: Arc<dyn TicketStore> = match &redis {
        Some(r) => Arc::new(RedisTickets(r.clone())),
        None => {
            let t = MemoryTicketStore::new();
            t.spawn_sweeper(Duration::from_secs(10), background.clone());
            t
        }
    };
    let bans: Arc<dyn Bans> = match &redis {
        Some(r) => Arc::new(RedisBans::new(
            r.clone(),
            config.limits.auth_failures_before_ban,
            config.limits.ban_duration,
        )),
        None => {
            let bans = Arc::new(BanList::new(
                config.limits.auth_failures_before_ban,
                config.limits.ban_duration,
            ));
            let sweep = bans.clone();
            hermes_ssh_gateway::periodic::every(
                Duration::from_secs(60),
                background.clone(),
                move || sweep.sweep(),
            );
            bans
        }
    };
    let bans: Arc<dyn Bans> = Arc::new(ByNetwork::new(bans, config.limits.ipv6_prefix));
    let detach = hermes_ssh_gateway::sessions::DetachPolicy {
        timeout: config.session.detach_timeout,
        scrollback: config.session.scrollback,
        max_per_user: config.limits.max_detached_per_user,
    };
    let recording_dir = config.recording.as_ref().map(|r| r.dir.clone());
    let web_link = match &config.web {
        Some(w) => {
            let web_listener = tokio::net::TcpListener::bind(w.listen)
                .await
                .with_context(|| format!("[web] listen = \"{}\": cannot bind", w.listen))?;
            tracing::info!(addr = %web_listener.local_addr()?, public_url = %w.public_url.0, "web front listening");
            let web_ctx = Arc::new(WebContext {
                namespaces: namespaces.clone(),
                public_url: w.public_url.0.clone(),
                oidc: oidc.clone(),
                tickets: tickets.clone(),
                sessions: SessionStore::new(),
                launch: launch.clone(),
                ops: ops.clone(),
                shutdown: shutdown.clone(),
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
                trusted_proxies: w.trusted_proxies.clone(),
                bans: bans.clone(),
                max_message_size: usize::try_from(w.max_message_size.as_u64())
                    .unwrap_or(usize::MAX),
                hub: hub.clone(),
                detach,
                idle_timeout: config.limits.idle_timeout,
                recording_dir: recording_dir.clone(),
            });
            tasks.push(tokio::spawn(hermes_ssh_gateway::web::serve(
                web_listener,
                web_ctx,
                shutdown.draining.clone(),
            )));
            Some(WebLink {
                tickets: tickets.clone(),
                public_url: w.public_url.0.clone(),
            })
        }
        None => None,
    };
    let ctx = SshContext {
        registry: registry.clone(),
        namespaces: namespaces.clone(),
        launch: launch.clone(),
        ops: ops.clone(),
        limits: SessionLimits {
            max_sessions_per_user: config.limits.max_sessions_per_user,
            idle_timeout: config.limits.idle_timeout,
            max_channels_per_connection: config.limits.max_channels_per_connection,
        },
        shutdown: shutdown.clone(),
        recording_dir,
        bans: bans.clone(),
        accept_env: config.session.accept_env.clone(),
        exec_policy: config.session.exec,
        enrollments,
        oidc,
        limiter,
        enroll_ttl,
        recheck_interval,
        hub,
        tickets: tickets.clone(),
        detach,
        pending_timeout,
        web_link,
    };
    let server = SshServer::new(host_key, ctx, &settings);
    let conn_limits = ConnectionLimits {
        max_connections: config.limits.max_connections,
        login_grace: config.limits.login_grace,
        bans,
    };

    let drain_timeout = config.limits.drain_timeout;
    let kill_grace = config.session.kill_grace;
    let stages = shutdown.clone();
    let sessions = ops.sessions.clone();
    let reload_launch = launch.clone();
    tokio::spawn(async move {
        signals(&config_path, &registry, &reload_launch).await;
        tracing::info!(sessions = sessions.len(), drain = ?drain_timeout, "shutting down: no new connections; telling sessions");
        stages.draining.cancel();
        sessions
            .wait_empty(tokio::time::Instant::now() + drain_timeout)
            .await;
        tracing::info!(sessions = sessions.len(), "ending remaining sessions");
        stages.terminate.cancel();
    });
    server.serve(listener, conn_limits, shutdown.clone()).await;
    // Connections are gone; wait for their programs to be ended: SIGHUP, then SIGKILL after
    // the grace, then a little for the kernel to reap the group and the cgroup to empty (a
    // bound, not a pause: the wait ends as soon as the last session is gone).
    ops.sessions
        .wait_empty(tokio::time::Instant::now() + kill_grace + Duration::from_secs(3))
        .await;
    shutdown.terminate.cancel();
    for t in tasks {
        t.await??;
    }
    tracing::info!("stopped");
    Ok(())
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
