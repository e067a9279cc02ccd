//! `hermes-ssh-gateway`: wiring only. Loads the config, builds the shared parts, starts the SSH
//! front and waits for a signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use hermes_ssh_gateway::config::Config;
use hermes_ssh_gateway::identity::claims::ClaimPolicy;
use hermes_ssh_gateway::identity::limits::PendingLimiter;
use hermes_ssh_gateway::identity::oidc::{Oidc, OidcSettings};
use hermes_ssh_gateway::identity::store::FileEnrollmentStore;
use hermes_ssh_gateway::identity::tickets::MemoryTicketStore;
use hermes_ssh_gateway::identity::KeyRegistry;
use hermes_ssh_gateway::launcher::{LaunchSpec, SessionEnv};
use hermes_ssh_gateway::ssh::{hostkey, SshContext, SshServer, SshSettings, WebLink};
use hermes_ssh_gateway::web::{SessionStore, WebContext};

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::DemoTui) => match hermes_ssh_gateway::tui::demo::run() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo-tui: {e}");
                std::process::ExitCode::FAILURE
            }
        },
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
            match rt.block_on(serve(config)) {
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
    println!(
        "{}: ok; {} users with {} keys in {}",
        path.display(),
        snap.user_count(),
        snap.key_count(),
        config.ssh.users_dir.display()
    );
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (host_key, origin) = hostkey::load_or_generate(&config.ssh.host_key)?;
    tracing::info!(
        path = %config.ssh.host_key.display(),
        fingerprint = %hostkey::fingerprint(&host_key),
        generated = origin == hostkey::Origin::Generated,
        "host key"
    );

    let shutdown = CancellationToken::new();
    let registry = KeyRegistry::open(&config.ssh.users_dir)
        .with_context(|| format!("users_dir {}", config.ssh.users_dir.display()))?;
    registry
        .watch(Duration::from_millis(100), shutdown.clone())
        .with_context(|| format!("watching {}", config.ssh.users_dir.display()))?;

    let launch = Arc::new(LaunchSpec::from_config(&config.session));
    warn_if_program_missing(&launch);

    let listener = tokio::net::TcpListener::bind(config.ssh.listen)
        .await
        .with_context(|| format!("[ssh] listen = \"{}\": cannot bind", config.ssh.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening; try: ssh -p {} {}", addr.port(), addr.ip());

    let settings = SshSettings {
        inactivity_timeout: config.ssh.inactivity_timeout,
        keepalive_interval: Some(config.ssh.keepalive_interval).filter(|d| !d.is_zero()),
    };
    let enrollments = Arc::new(
        FileEnrollmentStore::open(&config.state.dir)
            .with_context(|| format!("[state] dir {}", config.state.dir.display()))?,
    );
    let (oidc, limiter, enroll_ttl, pending_timeout) = match &config.oidc {
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
            oidc.spawn_discovery(shutdown.clone());
            let limiter = Arc::new(PendingLimiter::new(o.max_pending, o.max_pending_per_ip));
            (Some(oidc), Some(limiter), o.enroll_ttl, o.pending_timeout)
        }
        None => (None, None, Duration::ZERO, Duration::from_secs(600)),
    };
    let tickets = MemoryTicketStore::new();
    tickets.spawn_sweeper(Duration::from_secs(10), shutdown.clone());
    let mut web_task = None;
    let web_link = match &config.web {
        Some(w) => {
            let web_listener = tokio::net::TcpListener::bind(w.listen)
                .await
                .with_context(|| format!("[web] listen = \"{}\": cannot bind", w.listen))?;
            tracing::info!(addr = %web_listener.local_addr()?, public_url = %w.public_url.0, "web front listening");
            let web_ctx = Arc::new(WebContext {
                public_url: w.public_url.0.clone(),
                oidc: oidc.clone(),
                tickets: tickets.clone(),
                sessions: SessionStore::new(),
                launch: launch.clone(),
                session_ttl: w.session_ttl,
                ticket_ttl: w.ticket_ttl,
            });
            web_task = Some(tokio::spawn(hermes_ssh_gateway::web::serve(
                web_listener,
                web_ctx,
                shutdown.clone(),
            )));
            Some(WebLink {
                tickets: tickets.clone(),
                public_url: w.public_url.0.clone(),
            })
        }
        None => None,
    };
    let ctx = SshContext {
        registry,
        launch,
        accept_env: config.session.accept_env.clone(),
        exec_policy: config.session.exec,
        enrollments,
        oidc,
        limiter,
        enroll_ttl,
        pending_timeout,
        web_link,
    };
    let server = SshServer::new(host_key, ctx, &settings);

    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal_token.cancel();
    });
    server.serve(listener, shutdown).await;
    if let Some(t) = web_task {
        t.await??;
    }
    Ok(())
}

/// Tells the operator at start, not at the first login, that the program is not installed.
fn warn_if_program_missing(launch: &LaunchSpec) {
    // `prepare` with a workdir template would create a directory for the probe user: skip it.
    let Ok(user) = hermes_ssh_gateway::identity::UserId::parse("startup-check") else {
        return;
    };
    if launch.workdir.is_some() {
        return;
    }
    let probe = hermes_ssh_gateway::identity::Identity::from_mapped_key(user, String::new());
    if let Err(e) = launch.prepare(&probe, &SessionEnv::default(), &[]) {
        tracing::warn!("[session] command cannot be started: {e}; users will see an explanation screen until it is installed");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
