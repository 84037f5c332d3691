//! The `flotilla` operator CLI: parses flags and runs the command; every action is one or
//! more admin API calls through `flotilla_api::AdminClient`.

mod commands;
mod format;
mod login;
mod rollout;
mod telemetry;
mod trigger;

use clap::Parser;

fn main() {
    let cli = commands::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    if let Err(error) = runtime.block_on(commands::run(cli)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
