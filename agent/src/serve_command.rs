//! `flotilla-agent serve`: flags merged over the config file, start-up in the order that gives
//! the clearest errors (config, ONNX Runtime, models, listeners), then serving until a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_common::systemd::Notifier;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{AgentCommand, AgentConfig, ModelConfig};
use crate::metrics::Metrics;
use crate::repository::ModelRepository;
use crate::server::{AppState, start};
use flotilla_runtime::init_onnx_runtime;

/// Flags of `serve`; each overrides the config file's setting of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see docs/agent.md); flags override its settings. Settings only
    /// `run` uses (hub, state_dir, telemetry, ...) are refused.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A model to serve: NAME=FILE.onnx, or NAME=DIR with numbered version folders
    /// (DIR/1/model.onnx, DIR/2/model.onnx; the highest is the default). Repeatable.
    #[arg(long = "model", value_name = "NAME=PATH")]
    pub models: Vec<String>,
    /// Unix socket path to serve on.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Loopback TCP address to serve on, e.g. 127.0.0.1:8000 (port 0 picks one).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Path of libonnxruntime.so.1.31.1 (else ORT_DYLIB_PATH, else default places).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Sessions per model (requests run in parallel); default: CPU cores.
    #[arg(long)]
    pub sessions: Option<usize>,
    /// ONNX Runtime threads inside one request; default 1.
    #[arg(long)]
    pub intra_op_threads: Option<usize>,
    /// Largest request body in bytes; default 64 MiB.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
}

impl ServeArgs {
    /// The effective configuration: the file (if any) with the flags applied, then each
    /// model given the top-level settings it does not set itself.
    pub fn to_config(&self) -> anyhow::Result<AgentConfig> {
        let mut config = match &self.config {
            Some(path) => AgentConfig::load(path, AgentCommand::Serve)?,
            None => AgentConfig::default(),
        };
        for flag in &self.models {
            config.models.push(ModelConfig::from_flag(flag)?);
        }
        if self.socket.is_some() {
            config.socket = self.socket.clone();
        }
        if self.http.is_some() {
            config.http = self.http;
        }
        if self.ort_lib.is_some() {
            config.ort_lib = self.ort_lib.clone();
        }
        if let Some(bytes) = self.max_body_bytes {
            config.max_body_bytes = bytes;
        }
        for model in &mut config.models {
            model.sessions = self.sessions.or(model.sessions);
            model.intra_op_threads = self.intra_op_threads.or(model.intra_op_threads);
        }
        config.apply_model_defaults();
        config.validate(AgentCommand::Serve)?;
        Ok(config)
    }
}

/// Runs the agent's inference service until SIGTERM or SIGINT.
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives once the ready line is out must shut down
    // gracefully, not kill the process with the default action.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    init_onnx_runtime(config.ort_lib.as_deref())?;
    let models = config.models.clone();
    let repository = tokio::task::spawn_blocking(move || ModelRepository::load(&models))
        .await
        .context("model loader stopped")??;
    let repository = Arc::new(repository);
    let state = AppState {
        repository: repository.clone(),
        metrics: Arc::new(Metrics::default()),
        max_body_bytes: config.max_body_bytes,
        telemetry: None,
        telemetry_status: None,
        connections: None,
    };
    let server = start(&config, state).await?;
    let mut ready = String::from("flotilla-agent ready");
    if let Some(path) = &server.socket {
        ready.push_str(&format!(" socket={}", path.display()));
    }
    if let Some(address) = server.http {
        ready.push_str(&format!(" http={address}"));
    }
    // Scripts and tests wait for this line on stdout; systemd (Type=notify) for READY.
    println!("{ready}");
    let systemd = Notifier::from_env();
    systemd.ready(&ready);
    let mut watchdog = systemd.watchdog_ticker();

    if config.watch_interval_ms > 0 {
        let repository = repository.clone();
        let interval = Duration::from_millis(config.watch_interval_ms);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                log_reload(repository.reload(None).await);
            }
        });
    }
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading models");
                systemd.reloading();
                log_reload(repository.reload(None).await);
                systemd.ready(&ready);
            }
            _ = watchdog.tick() => systemd.watchdog(),
        }
    }
    systemd.stopping();
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown();
    server.wait().await;
    tracing::info!("stopped");
    Ok(())
}

fn log_reload(report: crate::repository::ReloadReport) {
    for error in &report.errors {
        tracing::warn!("reload: {error}");
    }
    if !report.loaded.is_empty() || !report.unloaded.is_empty() {
        tracing::info!(loaded = ?report.loaded, unloaded = ?report.unloaded, "models reloaded");
    }
}
