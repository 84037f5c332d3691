//! A whole hub (`TestHub`: embedded broker, SQLite in a temp folder, QUIC, telemetry) and
//! agent cores (`TestAgent`) in the calling process: fleet-sim runs thousands of devices
//! this way, and end-to-end tests a few. Every simulated device is a real agent core.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flotilla_agent::run_command::{AgentCore, RunConfig, start_core};
use flotilla_agent::sync::InjectedFaults;
use flotilla_agent::telemetry::TelemetryConfig;
use flotilla_api::AdminClient;
use flotilla_api::devices::EnrollmentTokenRequest;
use flotilla_common::clock::SystemClock;
use flotilla_hub::config::HubConfig;
use flotilla_hub::data_dir::DataDir;
use flotilla_hub::serve_command::{HubListeners, RunningHub, start};
use flotilla_runtime::Engine;

#[derive(Debug)]
pub struct TestHub {
    pub hub: RunningHub,
    pub operator_token: String,
    pub read_token: String,
    pub data_dir: PathBuf,
    /// The broker's own address (devices may be routed through proxies in front of it).
    pub broker: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl TestHub {
    /// The settings a `TestHub` serves with: steps every second (rollouts, triggers) so
    /// tests and simulations move fast, trigger commands allowed (the demo's retraining job
    /// is a command, and everything here is local), the drift evaluator as asked. The API
    /// and QUIC addresses are bound by `start`, and the broker's port chosen there.
    pub fn settings(drift_check_seconds: u64, drift_lookback_seconds: u64) -> HubConfig {
        let mut config = HubConfig::default();
        config.telemetry.drift_check_seconds = drift_check_seconds;
        config.telemetry.drift_lookback_seconds = drift_lookback_seconds;
        config.rollouts.tick_seconds = 1;
        config.triggers.tick_seconds = 1;
        config.triggers.allow_commands = true;
        config
    }

    /// Initialises a data folder in a temp dir and serves on loopback ports.
    pub async fn start(
        drift_check_seconds: u64,
        drift_lookback_seconds: u64,
    ) -> anyhow::Result<TestHub> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().to_owned();
        let clock = SystemClock::shared();
        let init = DataDir::new(&data_dir).init(clock.now_unix())?;
        // What `flotilla-hub serve` checks before binding: pushes need ONNX Runtime.
        flotilla_runtime::init_onnx_runtime(None)?;
        let mut config = Self::settings(drift_check_seconds, drift_lookback_seconds);
        // The embedded broker binds its own address: the one port chosen here.
        let broker: SocketAddr = format!("127.0.0.1:{}", crate::free_port()).parse()?;
        config.broker.listen = broker;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let listeners = HubListeners {
            api: tokio::net::TcpListener::bind(loopback).await?,
            quic: Some(std::net::UdpSocket::bind(loopback)?),
        };
        let hub = start(listeners, config, &data_dir, clock).await?;
        Ok(TestHub {
            hub,
            operator_token: init.operator_token,
            read_token: init.read_token,
            data_dir,
            broker,
            _dir: Some(dir),
        })
    }

    /// The hub's CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("keys/ca.crt")).expect("the hub's CA")
    }

    pub fn operator(&self) -> AdminClient {
        crate::admin_client(
            &self.hub.url,
            Some(self.operator_token.clone()),
            Some(&self.ca_pem()),
        )
        .expect("the hub's own URL parses")
    }
}

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
                enrollment_token: Some(enrollment_token.to_owned()),
                sessions: Some(1),
                intra_op_threads: Some(1),
                heartbeat_seconds: 10,
                telemetry: TelemetryConfig {
                    reconnect_jitter_seconds: 1.0,
                    drain_per_second: 50.0,
                    ..TelemetryConfig::default()
                },
                engine: Engine::Onnx,
                ..RunConfig::for_hub(hub_url, state_dir)
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
    let request = EnrollmentTokenRequest {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ttl_seconds: 3600,
        uses: 1,
    };
    Ok(operator.create_enrollment_token(&request).await?.token)
}
