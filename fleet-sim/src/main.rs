//! `flotilla-sim run SCENARIO.toml [--embedded-hub | --hub URL --token T --broker ADDR]`

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use flotilla_sim::{HubTarget, RunOptions, Scenario, run};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-sim",
    version,
    about = "Runs many real Flotilla agent cores against a hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario and report.
    Run {
        scenario: PathBuf,
        /// Start a hub in this process (the default).
        #[arg(long, conflicts_with = "hub")]
        embedded_hub: bool,
        /// A running hub's API instead.
        #[arg(long, requires_all = ["token", "broker"])]
        hub: Option<String>,
        /// Operator token for --hub.
        #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The CA certificate (PEM) of an https --hub: keys/ca.crt in its data folder.
        #[arg(long, env = "FLOTILLA_CA_FILE")]
        ca_file: Option<std::path::PathBuf>,
        /// That hub's MQTT broker, HOST:PORT (devices reach it through per-cohort proxies).
        #[arg(long)]
        broker: Option<std::net::SocketAddr>,
        /// Write the JSON report here (default: print it).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also draw the run (devices online and serving, windows, drift per feature) as SVG.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Spread the fleet over this many processes (default: the scenario's `processes`).
        #[arg(long)]
        processes: Option<usize>,
    },
    /// The whole loop, narrated: a hub, a simulated fleet and a real agent; version 1 in
    /// waves, drift, a retraining trigger, the quality gate and a canary rollout of the
    /// retrained model, then a broken version rolled back by the gates. Run it from the
    /// repository root (deploy/demo.sh does).
    Demo {
        /// Simulated devices in all (default: the scenario's 100).
        #[arg(long)]
        devices: Option<usize>,
        #[arg(long, default_value = "fleet-sim/scenarios/demo.toml")]
        scenario: PathBuf,
        /// A Python with scikit-learn and skl2onnx (deploy/setup.sh makes it).
        #[arg(long, default_value = ".cache/venv/bin/python")]
        python: PathBuf,
        #[arg(long, default_value = "deploy/demo/retrain.py")]
        retrain_script: PathBuf,
        #[arg(
            long,
            default_value = "agent/tests/fixtures/iris_classifier_broken.onnx"
        )]
        broken_model: PathBuf,
        /// The longest wait for one step, in seconds.
        #[arg(long, default_value_t = 300)]
        step_timeout: u64,
        /// Stop when the demo is done instead of waiting for Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// (internal) Run part of a fleet for a coordinating `run`; reads its spec on stdin.
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let (scenario, hub, token, ca_file, broker, json, svg, processes) = match cli.command {
        Command::Worker => {
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(flotilla_sim::worker::worker_main());
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            return result;
        }
        Command::Demo {
            devices,
            scenario,
            python,
            retrain_script,
            broken_model,
            step_timeout,
            exit,
        } => {
            let here = std::env::current_exe()?;
            let sibling = |name: &str| here.with_file_name(name);
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let options = flotilla_sim::demo::DemoOptions {
                scenario: absolute(scenario),
                devices,
                python: absolute(python),
                retrain_script: absolute(retrain_script),
                flotilla_cli: sibling("flotilla"),
                agent_exe: sibling("flotilla-agent"),
                broken_model: absolute(broken_model),
                step_timeout: std::time::Duration::from_secs(step_timeout),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(async {
                let demo = flotilla_sim::demo::run(&options).await?;
                if !exit {
                    tokio::signal::ctrl_c().await?;
                }
                demo.stop().await;
                anyhow::Ok(())
            });
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            return result;
        }
        Command::Run {
            scenario,
            embedded_hub: _,
            hub,
            token,
            ca_file,
            broker,
            json,
            svg,
            processes,
        } => (scenario, hub, token, ca_file, broker, json, svg, processes),
    };
    let scenario = Scenario::load(&scenario)?;
    let target = match (hub, token, broker) {
        (Some(url), Some(token), Some(broker)) => HubTarget::External {
            url,
            token,
            broker,
            ca_pem: ca_file
                .map(|path| {
                    std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
                })
                .transpose()?,
        },
        _ => HubTarget::Embedded,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let options = RunOptions {
        target,
        processes,
        worker_exe: None,
    };
    let report = runtime.block_on(run(&scenario, options, &|line: &str| eprintln!("{line}")))?;
    let text = serde_json::to_string_pretty(&report)?;
    match json {
        Some(path) => std::fs::write(&path, text)?,
        None => println!("{text}"),
    }
    if let Some(path) = svg {
        std::fs::write(&path, flotilla_sim::chart::svg(&report))?;
    }
    eprint!("{}", report.summary());
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if !(report.telemetry.reconciled && report.requests.reconciled) {
        std::process::exit(1);
    }
    Ok(())
}
