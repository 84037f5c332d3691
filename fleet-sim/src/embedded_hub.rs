//! `TestHub`: a whole hub in this process (embedded broker, SQLite in a temp folder, QUIC,
//! telemetry), for fleet-sim's embedded mode and for tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use flotilla_common::clock::SystemClock;
use flotilla_hub::client::AdminClient;
use flotilla_hub::data_dir::DataDir;
use flotilla_hub::serve_command::{RunningHub, ServeArgs, start};

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

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestHub {
    /// Initialises a data folder in a temp dir and serves on loopback ports.
    pub async fn start(
        drift_check_seconds: u64,
        drift_lookback_seconds: u64,
    ) -> anyhow::Result<TestHub> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().to_owned();
        let clock = SystemClock::shared();
        let init = DataDir::new(&data_dir).init(clock.now_unix())?;
        let broker: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let args = ServeArgs {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".parse()?,
            ort_lib: None,
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            mqtt_listen: broker,
            mqtt_url: None,
            advertise_mqtt: None,
            quic_listen: "127.0.0.1:0".parse()?,
            advertise_quic: None,
            no_quic: false,
            advertise_url: None,
            drift_check_seconds,
            drift_lookback_seconds,
            telemetry_queue: 8192,
            telemetry_queue_bytes: 64 * 1024 * 1024,
            rollout_tick_seconds: 1,
            trigger_tick_seconds: 1,
            // The demo's retraining job is a command; tests and simulations are local.
            allow_trigger_commands: true,
        };
        let hub = start(args, clock).await?;
        Ok(TestHub {
            hub,
            operator_token: init.operator_token,
            read_token: init.read_token,
            data_dir,
            broker,
            _dir: Some(dir),
        })
    }

    pub fn operator(&self) -> AdminClient {
        AdminClient::new(&self.hub.url, Some(self.operator_token.clone()))
            .expect("the hub's own URL parses")
    }
}
