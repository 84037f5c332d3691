//! The `flotilla` operator CLI: parses flags and hands over to `flotilla_hub::cli`.

use clap::Parser;

fn main() {
    let cli = flotilla_hub::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    if let Err(error) = runtime.block_on(flotilla_hub::cli::run(cli)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
