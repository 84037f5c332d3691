//! The `flotilla-hub` command: parses flags, sets up logging and hands over to the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use flotilla_hub::serve_command::{
    ServeArgs, create_token, init, log_filter, moved_flag_hint, run,
};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-hub",
    version,
    about = "Flotilla hub: signed model registry and fleet control"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data folder: database, root and signing keys, first admin tokens.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run the hub: what it does comes from a settings file (see `config default`), how the
    /// process runs from these flags.
    Serve(ServeArgs),
    /// The settings file of `serve`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Admin tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The root key, kept offline: export it, and rotate the signing key with it.
    #[command(subcommand)]
    Root(RootCommand),
    /// Copy the data folder of a hub (running or not) into a new folder OUT: databases by
    /// SQLite's VACUUM INTO, keys, artifacts, hub.toml, and backup.json listing each file's
    /// SHA-256.
    Backup {
        #[arg(long)]
        data_dir: PathBuf,
        out: PathBuf,
    },
    /// Bring a backup back into an empty data folder (every file checked first). Then run
    /// `flotilla keys rotate` against the restored hub if anything was deployed after the
    /// backup was taken (docs/hub.md says why).
    Restore {
        #[arg(long)]
        data_dir: PathBuf,
        from: PathBuf,
    },
    /// Files for an external broker that enforces what the embedded one does.
    #[command(subcommand)]
    BrokerConfig(BrokerConfigCommand),
}

#[derive(Debug, Subcommand)]
enum BrokerConfigCommand {
    /// Mosquitto 2: a TLS listener taking only certificates from the hub's CA, each
    /// device confined to its own topics. Writes mosquitto.conf, flotilla.acl, ca.crt,
    /// server.crt and server.key into --out.
    Mosquitto {
        #[arg(long)]
        data_dir: PathBuf,
        /// Folder to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Where Mosquitto listens.
        #[arg(long, default_value = "0.0.0.0:8883")]
        listen: std::net::SocketAddr,
        /// A name (DNS or IP) devices and the hub reach the broker by; repeat for more.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print a complete hub.toml: every setting with its documentation and default.
    Default,
}

#[derive(Debug, Subcommand)]
enum RootCommand {
    /// Copy the root key to a file (mode 0600); with --remove, delete it from the hub.
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        remove: bool,
    },
    /// Rotate the signing key with a root key held offline (stop the hub first; it takes the
    /// new key and republishes desired states when it starts).
    Rotate {
        #[arg(long)]
        data_dir: PathBuf,
        /// The exported root key.
        #[arg(long)]
        root_key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an admin token (printed once).
    Create {
        #[arg(long)]
        data_dir: PathBuf,
        /// read or operator.
        #[arg(long)]
        scope: String,
        /// Recorded as the actor in the audit log.
        #[arg(long)]
        name: String,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let args: Vec<String> = std::env::args().collect();
            let hint = Some(&args)
                .filter(|_| error.kind() == clap::error::ErrorKind::UnknownArgument)
                .and_then(|args| moved_flag_hint(args));
            if let Some(hint) = hint {
                eprintln!("error: {hint}");
                std::process::exit(2);
            }
            error.exit()
        }
    };
    let log_level = match &cli.command {
        Command::Serve(args) => args.log_level.as_deref(),
        _ => None,
    };
    let filter = match log_filter(log_level) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Init { data_dir } => init(&data_dir),
        Command::Backup { data_dir, out } => flotilla_hub::backup::backup(
            &data_dir,
            &out,
            flotilla_common::clock::Clock::now_unix(&flotilla_common::clock::SystemClock),
        )
        .map(|manifest| {
            println!(
                "backed up {} files of {} into {}",
                manifest.files.len(),
                data_dir.display(),
                out.display()
            )
        })
        .map_err(anyhow::Error::from),
        Command::Restore { data_dir, from } => flotilla_hub::backup::restore(&from, &data_dir)
            .map(|manifest| {
                println!(
                    "restored {} files (backup of {}) into {}",
                    manifest.files.len(),
                    manifest.made_at,
                    data_dir.display()
                )
            })
            .map_err(anyhow::Error::from),
        Command::Token(TokenCommand::Create {
            data_dir,
            scope,
            name,
        }) => create_token(&data_dir, &scope, &name),
        Command::Root(RootCommand::Export {
            data_dir,
            out,
            remove,
        }) => flotilla_hub::serve_command::export_root(&data_dir, &out, remove),
        Command::Root(RootCommand::Rotate { data_dir, root_key }) => {
            flotilla_hub::serve_command::rotate_offline(&data_dir, &root_key)
        }
        Command::BrokerConfig(BrokerConfigCommand::Mosquitto {
            data_dir,
            out,
            listen,
            names,
        }) => flotilla_hub::broker_config::write_mosquitto(
            &data_dir,
            &out,
            listen,
            &names,
            flotilla_common::clock::Clock::now_unix(&flotilla_common::clock::SystemClock),
        ),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", flotilla_hub::config_reference::default_toml());
            Ok(())
        }
        Command::Serve(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(args))),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
