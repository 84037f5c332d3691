//! `flotilla-hub init | serve | token create`: start-up order and signal handling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_common::clock::{Clock, SharedClock, SystemClock};
use tokio::signal::unix::{SignalKind, signal};

use crate::api::{ApiState, serve};
use crate::data_dir::{DataDir, new_token, token_hash};
use crate::fleet::Fleet;
use crate::registry::Registry;
use crate::store::{RegistryStore, Scope, TelemetryStore};
use crate::telemetry::{
    DriftEvaluator, EvaluatorSettings, Telemetry, TelemetryIngest, start_ingest_thread,
};
use crate::transport::broker::start_embedded;
use crate::transport::mqtt::{BrokerAddress, HubMqtt};
use crate::transport::quic::QuicIdentity;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The hub's data folder (made by flotilla-hub init).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address of the admin API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Path of libonnxruntime.so.1.31.1, used to check pushed models.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Largest model file accepted, in bytes (default 2 GiB).
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Where the embedded MQTT broker listens.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Use this external broker instead of the embedded one: mqtt://[USER:PASS@]HOST:PORT.
    #[arg(long)]
    pub mqtt_url: Option<String>,
    /// The broker address devices are told at enrollment (default: the broker's own).
    #[arg(long)]
    pub advertise_mqtt: Option<String>,
    /// Where the QUIC artifact endpoint listens (UDP).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub quic_listen: SocketAddr,
    /// The QUIC address devices are told at enrollment (default: the endpoint's own).
    #[arg(long)]
    pub advertise_quic: Option<String>,
    /// Serve artifacts over HTTP only.
    #[arg(long)]
    pub no_quic: bool,
    /// The API URL devices are told at enrollment for downloads (default: http://LISTEN).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Seconds between fleet-wide drift evaluations (alerts and /metrics gauges).
    #[arg(long, default_value_t = 60)]
    pub drift_check_seconds: u64,
    /// How far back (seconds) the fleet-wide drift evaluation looks.
    #[arg(long, default_value_t = 600)]
    pub drift_lookback_seconds: u64,
    /// Telemetry frames queued for ingest before the hub stops reading from the broker.
    #[arg(long, default_value_t = 8192)]
    pub telemetry_queue: usize,
    /// Bytes of telemetry frames queued for ingest, at most.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub telemetry_queue_bytes: u64,
    /// Seconds between rollout controller steps (installs, gates, rate).
    #[arg(long, default_value_t = 5)]
    pub rollout_tick_seconds: u64,
    /// Seconds between retraining trigger passes (each rule judges its own windows).
    #[arg(long, default_value_t = 5)]
    pub trigger_tick_seconds: u64,
    /// Let trigger rules run commands on this host (as the hub's user). Off by default:
    /// an operator token could otherwise run any program here.
    #[arg(long)]
    pub allow_trigger_commands: bool,
}

pub fn init(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let outcome = DataDir::new(data_dir).init(SystemClock.now_unix())?;
    println!("hub initialised in {}", data_dir.display());
    println!("root key id: {}", outcome.root_key_id);
    println!("operator token (shown once): {}", outcome.operator_token);
    println!("read-only token (shown once): {}", outcome.read_token);
    Ok(())
}

pub fn create_token(data_dir: &std::path::Path, scope: &str, name: &str) -> anyhow::Result<()> {
    let scope =
        Scope::parse(scope).with_context(|| format!("scope {scope:?} is not read or operator"))?;
    let store = DataDir::new(data_dir).open_store()?;
    let token = new_token(if scope == Scope::Operator {
        "flo_op"
    } else {
        "flo_ro"
    })?;
    let now = SystemClock.now_unix();
    store.insert_admin_token(&token_hash(&token), scope, name, now)?;
    store.audit(
        now,
        "flotilla-hub token create",
        "token.create",
        &format!("{name} ({})", scope.as_str()),
    )?;
    println!("{token}");
    Ok(())
}

pub fn export_root(
    data_dir: &std::path::Path,
    out: &std::path::Path,
    remove: bool,
) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    dir.export_root_key(out, remove)?;
    let store = dir.open_store()?;
    store.audit(
        SystemClock.now_unix(),
        "flotilla-hub root export",
        "root.export",
        &format!("to {} (removed from the hub: {remove})", out.display()),
    )?;
    println!(
        "root key written to {}{}",
        out.display(),
        if remove { "; removed from the hub" } else { "" }
    );
    Ok(())
}

/// Rotation with an offline root key; the desired states are re-signed here and published
/// when the hub starts (it republishes everything on connect).
pub fn rotate_offline(
    data_dir: &std::path::Path,
    root_key: &std::path::Path,
) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    let store: Arc<dyn RegistryStore> = Arc::new(dir.open_store()?);
    let registry = Arc::new(Registry::new(
        dir.clone(),
        store,
        dir.load_signing_key()?,
        SystemClock::shared(),
    ));
    let version = registry.rotate_signing_key(Some(root_key), "flotilla-hub root rotate")?;
    let fleet = Fleet::new(registry, String::new(), String::new());
    let updated = fleet.resign_all_desired()?.len();
    println!(
        "root metadata version {version} names the new signing key; {updated} desired states re-signed"
    );
    Ok(())
}

/// A hub serving in this process: what `flotilla-hub serve` runs, and what fleet-sim and
/// tests embed.
#[derive(Debug)]
pub struct RunningHub {
    /// The admin API's base URL, `http://ADDR`.
    pub url: String,
    /// The broker address devices are told, `HOST:PORT`.
    pub mqtt: String,
    /// The QUIC artifact endpoint devices are told, when there is one.
    pub quic: Option<String>,
    pub metrics: Arc<crate::metrics::HubMetrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningHub {
    /// The line `flotilla-hub serve` prints once it serves.
    pub fn ready_line(&self) -> String {
        let quic = self
            .quic
            .as_ref()
            .map(|q| format!(" quic={q}"))
            .unwrap_or_default();
        format!(
            "flotilla-hub ready api={} mqtt={}{quic}",
            self.url, self.mqtt
        )
    }

    /// Stops the API gracefully (the embedded broker and background tasks end with the
    /// process or runtime).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        Ok(())
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let hub = start(args, SystemClock::shared()).await?;
    println!("{}", hub.ready_line());
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutting down");
    hub.shutdown().await
}

/// Starts every part of a hub on an initialised data folder and returns once it serves.
/// Every part reads time from `clock`.
pub async fn start(args: ServeArgs, clock: SharedClock) -> anyhow::Result<RunningHub> {
    let data_dir = DataDir::new(&args.data_dir);
    let store: Arc<dyn RegistryStore> = Arc::new(data_dir.open_store()?);
    let signing_key = data_dir.load_signing_key()?;
    flotilla_runtime::init_onnx_runtime(args.ort_lib.as_deref())?;
    let registry = Arc::new(Registry::new(
        data_dir.clone(),
        store,
        signing_key,
        clock.clone(),
    ));
    let resign = registry.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        loop {
            ticker.tick().await;
            let registry = resign.clone();
            match tokio::task::spawn_blocking(move || registry.resign_expiring()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(count)) => tracing::info!(count, "manifests re-signed before expiry"),
                Ok(Err(error)) => tracing::error!(%error, "re-signing manifests failed"),
                Err(error) => tracing::error!(%error, "re-signing task failed"),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let broker = match &args.mqtt_url {
        Some(url) => BrokerAddress::parse(url).map_err(anyhow::Error::msg)?,
        None => {
            start_embedded(args.mqtt_listen).map_err(anyhow::Error::msg)?;
            BrokerAddress {
                host: args.mqtt_listen.ip().to_string(),
                port: args.mqtt_listen.port(),
                credentials: None,
            }
        }
    };
    let advertise_mqtt = args
        .advertise_mqtt
        .clone()
        .unwrap_or_else(|| format!("{}:{}", broker.host, broker.port));
    let advertise_url = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let metrics = Arc::new(crate::metrics::HubMetrics::default());
    let mut fleet = Fleet::new(registry.clone(), advertise_mqtt.clone(), advertise_url);
    let mut quic_advertised = None;
    if !args.no_quic {
        let identity =
            QuicIdentity::load_or_create(&data_dir.keys()).map_err(anyhow::Error::msg)?;
        let quic_address = crate::transport::quic::start(
            args.quic_listen,
            &identity,
            data_dir.artifacts(),
            metrics.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        let advertise_quic = args
            .advertise_quic
            .clone()
            .unwrap_or_else(|| quic_address.to_string());
        quic_advertised = Some(advertise_quic.clone());
        fleet = fleet.with_quic(advertise_quic, identity.pin());
    }
    let fleet = Arc::new(fleet);
    let telemetry_store = Arc::new(
        TelemetryStore::open(&args.data_dir.join("telemetry.db"))
            .context("cannot open the telemetry database")?,
    );
    let telemetry = Arc::new(Telemetry::new(
        telemetry_store.clone(),
        registry.store().clone(),
    ));
    let ingest = Arc::new(TelemetryIngest::new(
        telemetry_store,
        registry.store().clone(),
        metrics.clone(),
        clock.clone(),
    ));
    let telemetry_queue =
        start_ingest_thread(ingest, args.telemetry_queue, args.telemetry_queue_bytes);
    Arc::new(DriftEvaluator {
        telemetry: telemetry.clone(),
        metrics: metrics.clone(),
        settings: EvaluatorSettings {
            interval: Duration::from_secs(args.drift_check_seconds.max(1)),
            lookback: Duration::from_secs(args.drift_lookback_seconds.max(1)),
        },
        clock: clock.clone(),
    })
    .spawn();
    let mqtt = HubMqtt::start(
        &broker,
        fleet.clone(),
        registry.store().clone(),
        metrics.clone(),
        Some(telemetry_queue),
    );
    let rollouts = Arc::new(crate::rollout::Rollouts::new(
        registry.clone(),
        fleet.clone(),
        telemetry.clone(),
        Some(mqtt.clone()),
    ));
    let controller = rollouts.clone();
    let tick = Duration::from_secs(args.rollout_tick_seconds.max(1));
    tokio::spawn(async move {
        // Resumes every active rollout where its stored state left it.
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            controller.tick().await;
        }
    });
    let triggers = Arc::new(crate::triggers::Triggers::new(
        registry.clone(),
        telemetry.clone(),
        // Payload links are for receivers elsewhere: the advertised URL when there is one.
        args.advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}")),
        args.data_dir.join("triggers"),
        args.allow_trigger_commands,
    ));
    triggers.recover()?;
    triggers
        .clone()
        .spawn(Duration::from_secs(args.trigger_tick_seconds.max(1)));
    let hub_metrics = metrics.clone();
    let state = ApiState {
        registry,
        max_upload_bytes: args.max_upload_bytes,
        upload_dir: args.data_dir.join("uploads"),
        fleet: Some(fleet),
        mqtt: Some(mqtt),
        metrics,
        telemetry: Some(telemetry),
        rollouts: Some(rollouts),
        triggers: Some(triggers),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Ok(RunningHub {
        url: format!("http://{address}"),
        mqtt: advertise_mqtt,
        quic: quic_advertised,
        metrics: hub_metrics,
        stop,
        server,
    })
}
