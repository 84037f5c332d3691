//! `TestAgent`: a real agent core enrolled with a hub, built in a few lines, for tests and
//! for the fleet (every simulated device is one). Defaults suit a test on loopback: no local
//! listeners, one ONNX Runtime session, telemetry windows of the given length, faults off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flotilla_agent::run_command::{AgentCore, RunConfig, start_core};
use flotilla_agent::sync::InjectedFaults;
use flotilla_agent::telemetry::TelemetryConfig;
use flotilla_hub::client::AdminClient;
use flotilla_runtime::Engine;
use hyper::Method;

use crate::embedded_hub::TestHub;

#[derive(Debug, Clone)]
pub struct TestAgent {
    config: RunConfig,
}

impl TestAgent {
    /// An agent of the hub at `hub_url`, enrolling with `enrollment_token`, keeping its state
    /// in `state_dir`.
    pub fn new(hub_url: &str, enrollment_token: &str, state_dir: &Path) -> TestAgent {
        TestAgent {
            config: RunConfig {
                hub: hub_url.to_owned(),
                enrollment_token: Some(enrollment_token.to_owned()),
                state_dir: state_dir.to_owned(),
                socket: None,
                socket_mode: "0660".into(),
                http: None,
                ort_lib: None,
                sessions: Some(1),
                intra_op_threads: Some(1),
                hardware: BTreeMap::new(),
                mqtt: None,
                heartbeat_seconds: 10,
                telemetry: TelemetryConfig {
                    reconnect_jitter_seconds: 1.0,
                    drain_per_second: 50.0,
                    ..TelemetryConfig::default()
                },
                engine: Engine::Onnx,
                faults: InjectedFaults::default(),
            },
        }
    }

    /// Makes a one-time enrollment token with `labels` on `hub` and an agent that uses it.
    pub async fn enrolling(
        hub: &TestHub,
        labels: &[(&str, &str)],
        state_dir: &Path,
    ) -> anyhow::Result<TestAgent> {
        let token = enrollment_token(&hub.operator(), labels).await?;
        Ok(TestAgent::new(&hub.hub.url, &token, state_dir))
    }

    /// Reach the broker at this address instead of the one the hub names (a proxy).
    pub fn broker(mut self, address: SocketAddr) -> TestAgent {
        self.config.mqtt = Some(address.to_string());
        self
    }

    /// Serve the local inference API on this Unix socket.
    pub fn socket(mut self, path: PathBuf) -> TestAgent {
        self.config.socket = Some(path);
        self
    }

    pub fn window_seconds(mut self, seconds: u64) -> TestAgent {
        self.config.telemetry.window_seconds = seconds;
        self
    }

    pub fn upload_spread_seconds(mut self, seconds: f64) -> TestAgent {
        self.config.telemetry.upload_spread_seconds = seconds;
        self
    }

    pub fn spool_bytes(mut self, bytes: u64) -> TestAgent {
        self.config.telemetry.spool_max_bytes = bytes;
        self
    }

    pub fn heartbeat_seconds(mut self, seconds: u64) -> TestAgent {
        self.config.heartbeat_seconds = seconds;
        self
    }

    pub fn engine(mut self, engine: Engine, sessions: usize) -> TestAgent {
        self.config.engine = engine;
        self.config.sessions = Some(sessions);
        self
    }

    /// Capture up to `per_minute` requests of `model` a minute (inputs and outputs).
    pub fn capture(mut self, model: &str, per_minute: u32) -> TestAgent {
        self.config.telemetry.capture.insert(
            model.to_owned(),
            flotilla_agent::telemetry::CaptureConfig {
                per_minute,
                max_sample_bytes: 64 * 1024,
            },
        );
        self
    }

    pub fn faults(mut self, faults: InjectedFaults) -> TestAgent {
        self.config.faults = faults;
        self
    }

    /// The agent.toml settings this builds (to restart the same device later).
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// Enrolls (first start), connects and follows the hub.
    pub async fn start(&self) -> anyhow::Result<AgentCore> {
        start_core(&self.config, flotilla_common::clock::SystemClock::shared()).await
    }
}

/// A one-time enrollment token with these labels, valid for an hour.
pub async fn enrollment_token(
    operator: &AdminClient,
    labels: &[(&str, &str)],
) -> anyhow::Result<String> {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let answer = operator
        .json(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(serde_json::json!({"labels": labels, "ttl_seconds": 3600})),
        )
        .await?;
    answer["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the hub answered no token: {answer}"))
}
