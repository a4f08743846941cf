//! The command line: `quartet serve`, `quartet check`, `quartet config default`,
//! `quartet drill`, `quartet native call`.

use crate::config::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status of a config that cannot be used (EX_CONFIG is 78; we keep EX_USAGE, 64,
/// the status the docs and tests rely on).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "quartet",
    version,
    about = "One gateway, one resilience policy stack for every channel."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with a config file, or with the embedded default config.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Overrides server.log_format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Check a config file: prints "FILE: ok", or the error (exit status 64).
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The embedded identity's store: bootstrap, users, projects, role assignments.
    Identity {
        #[command(subcommand)]
        command: crate::identity::cli::IdentityCommand,
    },
    /// Work with the embedded config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a resilience drill against a running Quartet: exit 0 when every expectation
    /// holds, 1 when one fails, 2 when the scenario is invalid.
    Drill {
        scenario: PathBuf,
        /// Where the JSON result goes (default: beside the scenario, NAME.result.json).
        #[arg(long, value_name = "FILE")]
        result: Option<PathBuf>,
        /// Where the HTML report goes (default: beside the scenario, NAME.report.html).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Call the native-API channel's drivers locally.
    Native {
        #[command(subcommand)]
        command: NativeCommand,
    },
    /// Call or cast an oslo.messaging RPC method through the broker of the config.
    Rpc {
        #[command(subcommand)]
        command: crate::rpc::RpcCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum NativeCommand {
    /// Call OPERATION of DRIVER through its policy stack; prints the JSON result (exit
    /// status 1 and the error on failure).
    Call {
        driver: String,
        operation: String,
        /// The arguments, a JSON object.
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the embedded default config (the commented reference of every key).
    Default,
}

/// Logs to stdout, text or JSON; RUST_LOG sets the levels (default info).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(err) = result {
        eprintln!("quartet: logging not set up: {err}");
    }
}

/// Runs the command line and returns the process's exit status.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Identity { command } => crate::identity::cli::main(command),
        Command::Drill {
            scenario,
            result,
            report,
        } => quartet_drill::run(
            &scenario,
            &quartet_drill::Options {
                result_path: result,
                report_path: report,
                ..Default::default()
            },
        ),
        Command::Native {
            command:
                NativeCommand::Call {
                    driver,
                    operation,
                    args,
                    config,
                },
        } => crate::native::cli_call(config.as_deref(), &driver, &operation, args.as_deref()),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Rpc { command } => crate::rpc::cli(command),
        Command::Check { config: path } => match config::load(Some(&path)) {
            Ok(loaded) => {
                if let Some(tls) = &loaded.config.server.tls {
                    if let Err(err) = crate::server::load_tls(tls) {
                        eprintln!("{}: {}", path.display(), crate::error::Chain(&err));
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
                // Building catches what only building sees (a CA file that is not PEM).
                if let Err(err) = build_once(loaded.config) {
                    eprintln!("{}", describe_build_error(&loaded.source, &err));
                    return ExitCode::from(EXIT_CONFIG);
                }
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config, log_format } => {
            let loaded = match config::load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing(log_format.unwrap_or(loaded.config.server.log_format));
            let source = loaded.source.clone();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(crate::server::RunError::Build(err)) => {
                    let message = describe_build_error(&source, &err);
                    tracing::error!("{message}");
                    eprintln!("{message}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(err) => {
                    tracing::error!("{}", crate::error::Chain(&err));
                    eprintln!("quartet: {}", crate::error::Chain(&err));
                    if err.is_config() {
                        ExitCode::from(EXIT_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Builds the app once, in a runtime of its own, and drops it (for `check`).
fn build_once(config: config::Config) -> Result<(), crate::stack::BuildError> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        // No runtime, no build check: validation already passed.
        Err(_) => return Ok(()),
    };
    runtime.block_on(async {
        let shared = crate::stack::Shared::new(quartet_policies::metrics::Metrics::new());
        crate::App::build(config, &shared).map(drop)
    })
}

/// `FILE:LINE: KEY: message` for an error found while building.
fn describe_build_error(source: &config::Source, err: &crate::stack::BuildError) -> String {
    let src = match source {
        config::Source::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        config::Source::Embedded => config::DEFAULT_CONFIG.to_string(),
    };
    config::ConfigError::at(&source.name(), &src, err.key_path(), err.message()).to_string()
}
