//! The local Open Inference Protocol server on a Unix socket and loopback TCP.
//!
//! `start` binds the listeners and serves until `RunningServer::shutdown`; shutdown stops
//! accepting, lets in-flight requests finish (within a grace period) and removes the socket.

mod error;
mod handlers;
mod infer;
mod listeners;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::connection_cap::{Capped, ConnectionCap};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::ApiError;
pub use infer::{OutputChoice, decode_request, encode_response, split_body};
pub use listeners::{ListenError, bind_tcp, bind_unix};

use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::repository::ModelRepository;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub repository: Arc<ModelRepository>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Where requests are recorded for drift telemetry (agents following a hub).
    pub telemetry: Option<Arc<crate::telemetry::Recorder>>,
    /// Telemetry counters for `/metrics`.
    pub telemetry_status: Option<Arc<crate::telemetry::TelemetryStatus>>,
    /// The listeners' connection cap, for `/metrics` (set by `start`).
    pub connections: Option<Arc<ConnectionCap>>,
}

/// A server that is accepting requests.
#[derive(Debug)]
pub struct RunningServer {
    pub socket: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<std::io::Result<()>>,
    grace: Duration,
}

/// Binds the configured listeners and starts serving.
pub async fn start(
    config: &AgentConfig,
    mut state: AppState,
) -> Result<RunningServer, ListenError> {
    let (shutdown, signal) = watch::channel(false);
    // One cap over both listeners: what a device can afford is connections in total.
    let connections = ConnectionCap::new(config.max_connections.max(1));
    state.connections = Some(connections.clone());
    let router = handlers::router(state);
    let mut tasks = JoinSet::new();
    let stopped = move |mut signal: watch::Receiver<bool>| async move {
        let _ = signal.wait_for(|stop| *stop).await;
    };
    // Bind everything before serving anything, so a bad second listener fails start-up cleanly.
    let unix = match &config.socket {
        Some(path) => Some((
            path.clone(),
            bind_unix(path, config.socket_permissions().unwrap_or(0o660))?,
        )),
        None => None,
    };
    let tcp = match config.http {
        Some(address) => Some(bind_tcp(address).await?),
        None => None,
    };
    let http = match &tcp {
        Some(listener) => Some(
            listener
                .local_addr()
                .map_err(|source| ListenError::BindTcp {
                    address: config.http.expect("tcp implies http"),
                    source,
                })?,
        ),
        None => None,
    };
    if let Some((path, listener)) = unix {
        let served = axum::serve(Capped::new(listener, connections.clone()), router.clone())
            .with_graceful_shutdown(stopped(signal.clone()));
        tasks.spawn(async move {
            let result = served.await;
            // Remove the socket file so the next start (or a client) sees no stale socket.
            let _ = std::fs::remove_file(&path);
            result
        });
    }
    if let Some(listener) = tcp {
        tasks.spawn(
            axum::serve(Capped::new(listener, connections), router)
                .with_graceful_shutdown(stopped(signal))
                .into_future(),
        );
    }
    Ok(RunningServer {
        socket: config.socket.clone(),
        http,
        shutdown,
        tasks,
        grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

impl RunningServer {
    /// Stops accepting connections; `wait` then lets in-flight requests finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every listener has drained (or the grace period ran out).
    pub async fn wait(mut self) {
        let drained = async {
            while let Some(result) = self.tasks.join_next().await {
                if let Ok(Err(error)) = result {
                    tracing::error!(%error, "listener failed");
                }
            }
        };
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "requests still running after the grace period; stopping anyway"
            );
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
