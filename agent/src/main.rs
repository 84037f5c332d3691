//! The `flotilla-agent` command: parses flags and hands over to the library.

use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_agent::serve_command::{ServeArgs, serve};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-agent",
    version,
    about = "Flotilla device agent: serves ONNX models over the Open Inference Protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve models locally on a Unix socket and/or loopback TCP.
    Serve(ServeArgs),
    /// Follow a hub: enroll, install the models it assigns, serve them, report.
    Run {
        /// agent.toml (see docs/agent.md).
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// The settings file (agent.toml) of `serve` and `run`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Enroll with the hub now (what `run` does on its first start) and exit: for install
    /// scripts, which should fail at once on a bad token or an unreachable hub.
    Enroll {
        /// agent.toml (see docs/agent.md).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Use this state folder instead of the config's state_dir (an image being prepared
        /// under another root).
        #[arg(long)]
        state_dir: Option<std::path::PathBuf>,
        /// Give up after this many seconds of trying to reach the hub.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ForCommand {
    Run,
    Serve,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a complete agent.toml: every setting with its documentation and default.
    Default {
        /// The command the file is for (each refuses the keys only the other takes).
        #[arg(long = "for", value_enum, default_value = "run")]
        command: ForCommand,
    },
}

/// Runs the command on a tokio runtime. The command itself lets in-flight requests finish
/// within the grace period; model runs still going after that (their clients were cut off)
/// are abandoned, so the process exits promptly.
fn run_to_completion(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => flotilla_agent::config::AgentConfig::load_for_run(&config)
            .map_err(anyhow::Error::from)
            .and_then(|config| run_to_completion(flotilla_agent::run_command::run(config))),
        Command::Enroll {
            config,
            state_dir,
            timeout_seconds,
        } => flotilla_agent::config::AgentConfig::load_for_run(&config)
            .map_err(anyhow::Error::from)
            .and_then(|mut config| {
                if let Some(dir) = state_dir {
                    config.state_dir = Some(dir);
                }
                run_to_completion(flotilla_agent::run_command::enroll(
                    config,
                    Duration::from_secs(timeout_seconds),
                ))
            }),
        Command::Config(ConfigCommand::Default { command }) => {
            let command = match command {
                ForCommand::Run => flotilla_agent::config::AgentCommand::Run,
                ForCommand::Serve => flotilla_agent::config::AgentCommand::Serve,
            };
            print!(
                "{}",
                flotilla_agent::config_reference::default_toml(command)
            );
            Ok(())
        }
        Command::Serve(args) => args
            .to_config()
            .and_then(|config| run_to_completion(serve(config))),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
