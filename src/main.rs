//! `hermes-ssh-gateway`: the command line. Each subcommand is dispatched to the library (the
//! admin console, the demo program) or to `startup` (checking a configuration, serving).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hermes_ssh_gateway::config::Config;

mod startup;

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
        Some(Command::CheckConfig) => match startup::check_config(&cli.config) {
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
            match rt.block_on(startup::serve(config, cli.config.clone())) {
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
