//! `keybridge`: the server (`keybridge server ...`) and its CLI client.

mod audited;
mod cli;
mod cli_audit;
mod cli_auth;
mod cli_logical;
mod cli_progress;
mod cli_sync;
mod config;
mod deadline;
mod error;
mod forward;
mod gate;
mod hygiene;
mod migrate;
mod ratelimit;
mod seal;
mod server;
mod service;
mod service_logical;
mod service_sync;
mod serving;
mod slots;
mod telemetry;
mod tls;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Client, Command};
use crate::config::{Config, Limits, Storage};
use crate::error::{Error, exit};

/// mimalloc instead of glibc's malloc: a request allocates some seventy
/// small blocks, and glibc spent about 11% of the server's CPU on them
/// (`malloc_consolidate`, which every block of a KiB or more triggers, and
/// its arena locks); audited `Get`s at c=32 gained 7-10%. Built with
/// `no_thp`: mimalloc otherwise asks for transparent huge pages, and the
/// 2 MiB pages it touched raised the server's RSS at idle from 24 to 41 MB.
/// Measured in docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::vault_habits(std::env::args_os().collect());
    // `keybridge server` has a parser of its own: its help shows no client flags.
    let cli = if args.get(1).is_some_and(|a| a == "server") {
        let server = cli::ServerCli::parse_from(&args[1..]);
        Cli { global: cli::Global::default_for_server(), command: Command::Server(server.args) }
    } else {
        Cli::parse_from(args)
    };
    if !matches!(cli.command, Command::Server(_)) {
        hygiene::default_sigpipe();
    }
    // Network IO runs on the runtime's threads, where SIGPIPE is blocked;
    // output to stdout is written from this thread.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(hygiene::block_sigpipe)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The log: to stderr, as text or JSON lines (`log_format`), at
/// `log_level` unless `KEYBRIDGE_LOG` says otherwise. The level can be
/// changed later (SIGHUP) through the returned handle.
fn init_logging(level: &str, format: config::LogFormat) -> server::LogControl {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = tracing_subscriber::EnvFilter::try_from_env("KEYBRIDGE_LOG").ok();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| server::log_filter(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && format == config::LogFormat::Text;
    // A closed stderr loses the log; it must not panic the task that
    // logged (tracing-subscriber would report the failed write with
    // eprintln!, which panics on that same closed stderr).
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).log_internal_errors(false);
    let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match format {
        config::LogFormat::Text => Box::new(fmt),
        config::LogFormat::Json => Box::new(fmt.json().flatten_event(true).with_current_span(false)),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    server::LogControl::new(handle, env_set)
}

async fn run(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Server(args) => {
            let (config, dev) = if args.dev {
                let address = args.dev_listen_address.parse().map_err(|_| {
                    Error::Usage(format!("--dev-listen-address {:?} is not host:port", args.dev_listen_address))
                })?;
                let config = Config {
                    address,
                    tls: None,
                    storage: Storage::InMemory,
                    limits: Limits::default(),
                    disable_mlock: false,
                    log_level: "info".into(),
                    log_format: crate::config::LogFormat::Text,
                    policy_check_rego: None,
                    rotation_verify_command: None,
                    serving_threads: crate::config::default_serving_threads(),
                    allowed_endpoint_hosts: None,
                    audit_file_dir: None,
                    api_addr: None,
                    node_id: None,
                    without_effect: Vec::new(),
                    seals: Vec::new(),
                    telemetry: None,
                    cluster_name: "keybridge".into(),
                };
                (config, Some(server::DevOptions { root_token_id: args.dev_root_token_id }))
            } else {
                let path = args
                    .config
                    .clone()
                    .ok_or_else(|| Error::Usage("give --config FILE, or --dev for a throwaway dev server".into()))?;
                (Config::load(&path)?, None)
            };
            let config_path = if args.dev { None } else { args.config };
            let log = init_logging(&config.log_level, config.log_format);
            server::run(config, dev, config_path, log).await?;
            Ok(exit::OK)
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keybridge", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { dir } => cli::write_man_pages(&dir).map(|()| exit::OK),
        Command::Policy(cli::PolicyCommand::Lint { files, rego }) => {
            cli::policy_lint(&files, rego.as_ref(), cli.global.output)
        }
        Command::Operator(cli::OperatorCommand::Migrate { from, to, overwrite }) => {
            migrate::run(&from, &to, overwrite, cli.global.output).await
        }
        Command::Audit(cli_audit::AuditCommand::Verify { files, key_file: Some(key), .. }) => {
            cli_audit::verify_offline(&files, &key, cli.global.output)
        }
        client_command => {
            let c = Client::connect(&cli.global).await?;
            match client_command {
                Command::Kv(cmd) => cli::kv(&c, cmd).await.map(|()| exit::OK),
                Command::Mount(cmd) => cli::mount(&c, cmd).await.map(|()| exit::OK),
                Command::Policy(cmd) => cli::policy(&c, cmd).await.map(|()| exit::OK),
                Command::Token(cmd) => cli::token(&c, cmd).await.map(|()| exit::OK),
                Command::Operator(cmd) => cli::operator(&c, cmd).await,
                Command::Audit(cmd) => cli_audit::audit(&c, cmd).await,
                Command::Auth(cmd) => cli_auth::auth(&c, cmd).await.map(|()| exit::OK),
                Command::Sync(cmd) => cli_sync::sync(&c, cmd).await.map(|()| exit::OK),
                Command::Rotate { path, field, length, grace, wait, timeout, every, engine } => {
                    let a = cli_sync::RotateArgs { path, field, length, grace, wait, timeout, every, engine };
                    cli_sync::rotate(&c, a).await.map(|()| exit::OK)
                }
                Command::Read { path, params } => cli_logical::read(&c, path, params).await.map(|()| exit::OK),
                Command::Write { path, params } => cli_logical::write(&c, path, params).await.map(|()| exit::OK),
                Command::Delete { path } => cli_logical::delete(&c, path).await.map(|()| exit::OK),
                Command::List { path } => cli_logical::list(&c, path).await.map(|()| exit::OK),
                Command::PathHelp { path } => cli_logical::path_help(&c, path).await.map(|()| exit::OK),
                Command::Lease(cmd) => cli_logical::lease(&c, cmd).await.map(|()| exit::OK),
                Command::Plugin(cmd) => cli_logical::plugin(&c, cmd).await.map(|()| exit::OK),
                Command::Login { path, role, jwt } => cli_auth::login(&c, path, role, jwt).await.map(|()| exit::OK),
                Command::Server(_) | Command::Completion { .. } | Command::Man { .. } => {
                    Err(Error::Usage("this command takes no client connection".into()))
                }
            }
        }
    }
}
