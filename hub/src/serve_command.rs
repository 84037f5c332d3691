//! `flotilla-hub init | serve | token create | root`: start-up order (settings, ONNX Runtime,
//! listeners, then every part of the hub on them) and signal handling.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_common::clock::{Clock, SharedClock, SystemClock};
use flotilla_common::systemd::{Notifier, StopSignals};
use tracing_subscriber::EnvFilter;

use crate::api::listener::ApiListener;
use crate::api::{ApiState, serve};
use crate::ca::HubCa;
use crate::config::{ConfigSource, HubConfig, HubConfigError};
use crate::data_dir::{DataDir, new_token, token_hash};
use crate::fleet::{Fleet, FleetError};
use crate::periodic::{spawn_periodic, spawn_periodic_blocking};
use crate::registry::{Registry, RegistryError, Signer};
use crate::store::{RegistryStore, Scope, TelemetryStore};
use crate::telemetry::{
    DriftEvaluator, EvaluatorSettings, Telemetry, TelemetryIngest, start_ingest_thread,
};
use crate::transport::broker::{BrokerTls, EmbeddedBroker};
use crate::transport::mqtt::{BrokerAddress, HubMqtt};
use crate::transport::quic::QuicIdentity;
use flotilla_common::connection_cap::{Capped, ConnectionCap};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The hub's data folder (made by flotilla-hub init).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The settings file (`flotilla-hub config default` prints one with every key).
    /// Default: DATA_DIR/hub.toml when it exists, else the default settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. info, debug or flotilla_hub=debug,info (logs go to stderr).
    /// Default: FLOTILLA_LOG, else info.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Path of libonnxruntime.so.1.31.1, used to check pushed models.
    /// Default: ORT_DYLIB_PATH, then the usual places.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
}

/// The log filter: `--log-level` when given (a bad one is an error), else FLOTILLA_LOG, else
/// info (a bad FLOTILLA_LOG falls back to info, as it always has).
pub fn log_filter(flag: Option<&str>) -> anyhow::Result<EnvFilter> {
    match flag {
        // The parse error's source repeats its text, so it is not chained.
        Some(level) => EnvFilter::try_new(level).map_err(|error| {
            anyhow::anyhow!(
                "--log-level {level:?} is not a log filter ({error}); give e.g. info, debug or flotilla_hub=debug,info"
            )
        }),
        None => Ok(EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| "info".into())),
    }
}

/// The flags `serve` had before what the hub does moved into hub.toml, with the key each
/// became, so an old command line gets told where its setting went.
pub const MOVED_SERVE_FLAGS: &[(&str, &str)] = &[
    ("--listen", "listen"),
    ("--advertise-url", "advertise_url"),
    ("--max-upload-bytes", "max_upload_bytes"),
    ("--mqtt-listen", "[broker] listen"),
    ("--mqtt-url", "[broker] url"),
    ("--advertise-mqtt", "[broker] advertise"),
    ("--quic-listen", "[quic] listen"),
    ("--advertise-quic", "[quic] advertise"),
    ("--no-quic", "[quic] enabled = false"),
    ("--drift-check-seconds", "[telemetry] drift_check_seconds"),
    (
        "--drift-lookback-seconds",
        "[telemetry] drift_lookback_seconds",
    ),
    ("--telemetry-queue", "[telemetry] queue_frames"),
    ("--telemetry-queue-bytes", "[telemetry] queue_bytes"),
    ("--rollout-tick-seconds", "[rollouts] tick_seconds"),
    ("--trigger-tick-seconds", "[triggers] tick_seconds"),
    (
        "--allow-trigger-commands",
        "[triggers] allow_commands = true",
    ),
];

/// For a `flotilla-hub serve` command line that uses a flag which became a setting: what to
/// write instead.
pub fn moved_flag_hint(args: &[String]) -> Option<String> {
    if args.get(1).map(String::as_str) != Some("serve") {
        return None;
    }
    args.iter().skip(2).find_map(|arg| {
        let flag = arg.split_once('=').map_or(arg.as_str(), |(flag, _)| flag);
        MOVED_SERVE_FLAGS
            .iter()
            .find(|(moved, _)| *moved == flag)
            .map(|(moved, key)| {
                format!(
                    "flotilla-hub serve no longer takes {moved}: write `{key}` in the settings file instead (--config FILE, or DATA_DIR/hub.toml); `flotilla-hub config default` prints every setting"
                )
            })
    })
}

pub fn init(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let folder = DataDir::new(data_dir);
    let outcome = folder.init(SystemClock.now_unix())?;
    let ca = HubCa::load_or_create(&folder.keys(), SystemClock.now_unix())?;
    println!("hub initialised in {}", data_dir.display());
    println!("root key id: {}", outcome.root_key_id);
    println!(
        "TLS CA: {} (fingerprint {}); give it to the CLI with --ca-file",
        HubCa::certificate_path(&folder.keys()).display(),
        ca.fingerprint()
    );
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
    let signer = Signer::load(&dir, store.as_ref())?;
    let registry = Arc::new(Registry::new(
        dir.clone(),
        store,
        signer,
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

    /// True while the API server runs (it ends only on shutdown or a fatal accept error).
    pub fn is_serving(&self) -> bool {
        !self.server.is_finished()
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
    let (config, source) = HubConfig::for_serve(args.config.as_deref(), &args.data_dir)?;
    match &source {
        ConfigSource::File(path) => tracing::info!(file = %path.display(), "settings read"),
        ConfigSource::Defaults => {
            tracing::info!("no settings file (--config, or DATA_DIR/hub.toml): the defaults")
        }
    }
    // Before binding anything: a hub that cannot check models should not start.
    flotilla_runtime::init_onnx_runtime(args.ort_lib.as_deref())?;
    let mut signals = StopSignals::install()?;
    let listeners = HubListeners::bind(&config).await?;
    let hub = start(listeners, config, &args.data_dir, SystemClock::shared()).await?;
    println!("{}", hub.ready_line());
    // Under systemd (Type=notify): READY once serving, watchdog pings while the API serves.
    let systemd = Notifier::from_env();
    systemd.ready(&hub.ready_line());
    systemd
        .serve_until_stopped(&mut signals, || hub.is_serving())
        .await;
    tracing::info!("shutting down");
    hub.shutdown().await
}

/// The sockets a hub serves on, bound before `start` so an embedder can bind port 0 and
/// know the port, or bind however it likes. The embedded MQTT broker is not among them:
/// rumqttd binds its own address (`[broker] listen`) and cannot be handed a listener.
#[derive(Debug)]
pub struct HubListeners {
    /// The admin API (HTTP).
    pub api: tokio::net::TcpListener,
    /// The QUIC artifact endpoint; None when `[quic] enabled = false`.
    pub quic: Option<std::net::UdpSocket>,
}

impl HubListeners {
    /// Binds the addresses `config` names.
    pub async fn bind(config: &HubConfig) -> anyhow::Result<HubListeners> {
        let api = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (the setting listen); is another hub running there?",
                    config.listen
                )
            })?;
        let quic = if config.quic.enabled {
            let socket = std::net::UdpSocket::bind(config.quic.listen).with_context(|| {
                format!(
                    "cannot listen for QUIC on {} (the setting [quic] listen); pick another port or set [quic] enabled = false",
                    config.quic.listen
                )
            })?;
            Some(socket)
        } else {
            None
        };
        Ok(HubListeners { api, quic })
    }
}

/// How often manifests are looked at for re-signing: they live 30 days and are re-signed
/// with 7 left, so hourly is ample.
const RESIGN_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Starts every part of a hub on an initialised data folder, serving on `listeners` with
/// `config`, and returns once it serves. Every part reads time from `clock`. The embedded
/// broker (unless `[broker] url` names another) binds `[broker] listen` here.
pub async fn start(
    listeners: HubListeners,
    config: HubConfig,
    data_dir: &Path,
    clock: SharedClock,
) -> anyhow::Result<RunningHub> {
    config.validate().map_err(HubConfigError::Invalid)?;
    if config.quic.enabled != listeners.quic.is_some() {
        anyhow::bail!(
            "[quic] enabled is {} but {} QUIC socket was given; bind the listeners from the same settings (HubListeners::bind)",
            config.quic.enabled,
            if listeners.quic.is_some() { "a" } else { "no" }
        );
    }
    let folder = DataDir::new(data_dir);
    let store: Arc<dyn RegistryStore> = Arc::new(folder.open_store()?);
    let abandoned = folder.clear_abandoned_uploads()?;
    if abandoned > 0 {
        tracing::info!(
            files = abandoned,
            "removed uploads a killed hub left behind"
        );
    }
    let signer = Signer::load(&folder, store.as_ref())?;
    let registry = Arc::new(Registry::new(folder.clone(), store, signer, clock.clone()));
    let resign = registry.clone();
    spawn_periodic_blocking("re-signing manifests", RESIGN_CHECK_EVERY, move || {
        let count = resign.resign_expiring()?;
        if count > 0 {
            tracing::info!(count, "manifests re-signed before expiry");
        }
        Ok::<(), RegistryError>(())
    });
    let address = listeners.api.local_addr()?;
    // Devices download from here, and trigger payloads link here: receivers are elsewhere.
    let scheme = if config.tls.enabled { "https" } else { "http" };
    let advertise_url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{address}"));
    let ca = Arc::new(HubCa::load_or_create(&folder.keys(), clock.now_unix())?);
    // One certificate for every TLS channel the hub serves (API, MQTT) and for its own MQTT
    // client (its name is the hub's identity on the broker).
    let identity = if config.tls.enabled {
        let names = certificate_names(&config, address, &advertise_url);
        let identity = ca.issue_server(&names, clock.now_unix())?;
        tracing::info!(?names, ca = %ca.fingerprint(), "serving over TLS");
        Some(identity)
    } else {
        tracing::warn!(
            "[tls] enabled = false: the API and the embedded broker speak plain text on loopback"
        );
        None
    };
    let api_tls = identity
        .as_ref()
        .map(|identity| {
            crate::api::listener::server_config(
                &identity.chain_pem,
                &identity.key_pem,
                ca.certificate_der(),
            )
        })
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let (broker, embedded_broker) = match &config.broker.url {
        Some(url) => (BrokerAddress::parse(url).map_err(anyhow::Error::msg)?, None),
        None => {
            let tls = identity
                .as_ref()
                .map(|identity| broker_tls_files(&folder, identity))
                .transpose()?;
            let embedded =
                EmbeddedBroker::start(config.broker.listen, tls, registry.store().clone())
                    .await
                    .map_err(anyhow::Error::msg)?;
            let bound = embedded.address();
            let host = if bound.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                bound.ip().to_string()
            };
            let address = BrokerAddress {
                host,
                port: bound.port(),
                credentials: None,
                tls: identity.is_some(),
            };
            (address, Some(embedded))
        }
    };
    let advertise_mqtt = config
        .broker
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{}:{}", broker.host, broker.port));
    let mqtt_tls = if broker.tls {
        let identity = identity.as_ref().ok_or_else(|| {
            anyhow::anyhow!("[broker] url is mqtts:// but [tls] enabled = false: the hub has no certificate to present")
        })?;
        let trust = flotilla_api::tls::ServerTrust::ca_pem(ca.certificate_pem(), "the hub's CA")?;
        let client =
            flotilla_api::tls::ClientIdentity::from_pem(&identity.chain_pem, &identity.key_pem)?;
        Some(flotilla_api::tls::client_config(&trust, Some(&client))?)
    } else {
        None
    };
    let metrics = Arc::new(crate::metrics::HubMetrics::default());
    let mut fleet = Fleet::new(
        registry.clone(),
        advertise_mqtt.clone(),
        advertise_url.clone(),
    )
    .with_ca(
        ca.clone(),
        Duration::from_secs(config.tls.device_certificate_days * 24 * 3600),
    )
    .with_mqtt_tls(broker.tls)
    .with_revocation_list(
        std::iter::once(folder.keys().join("crl.pem"))
            .chain(config.broker.crl_file.clone())
            .collect(),
    );
    fleet.write_revocation_list();
    let mut quic_advertised = None;
    if let Some(socket) = listeners.quic {
        let identity = QuicIdentity::load_or_create(&folder.keys()).map_err(anyhow::Error::msg)?;
        // With TLS on, devices present their certificates over QUIC too.
        let devices = config
            .tls
            .enabled
            .then(|| crate::transport::quic::DeviceCertificates {
                ca: ca.certificate_der().to_vec(),
                store: registry.store().clone(),
            });
        let quic_address = crate::transport::quic::start(
            socket,
            &identity,
            folder.artifacts(),
            metrics.clone(),
            devices,
        )
        .map_err(anyhow::Error::msg)?;
        let advertise_quic = config.quic.advertise.unwrap_or(quic_address).to_string();
        quic_advertised = Some(advertise_quic.clone());
        fleet = fleet.with_quic(advertise_quic, identity.pin());
    }
    let fleet = Arc::new(fleet);
    let offline_after = Duration::from_secs(config.devices.offline_after_seconds);
    let silent = fleet.clone();
    spawn_periodic_blocking(
        "marking silent devices offline",
        (offline_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        move || {
            let ids = silent.mark_silent_devices_offline(offline_after)?;
            if !ids.is_empty() {
                tracing::info!(devices = ?ids, "marked offline: nothing heard from them for {} s", offline_after.as_secs());
            }
            Ok::<(), FleetError>(())
        },
    );
    let telemetry_store = Arc::new(
        TelemetryStore::open(&data_dir.join("telemetry.db"))
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
    let telemetry_queue = start_ingest_thread(
        ingest,
        config.telemetry.queue_frames,
        config.telemetry.queue_bytes,
    );
    Arc::new(DriftEvaluator {
        telemetry: telemetry.clone(),
        metrics: metrics.clone(),
        settings: EvaluatorSettings {
            interval: Duration::from_secs(config.telemetry.drift_check_seconds),
            lookback: Duration::from_secs(config.telemetry.drift_lookback_seconds),
        },
        clock: clock.clone(),
    })
    .spawn();
    let mqtt = HubMqtt::start(
        &broker,
        mqtt_tls,
        fleet.clone(),
        registry.store().clone(),
        metrics.clone(),
        Some(telemetry_queue),
    );
    if !mqtt.wait_subscribed(Duration::from_secs(5)).await {
        tracing::warn!(broker = %format!("{}:{}", broker.host, broker.port), "not subscribed to the MQTT broker yet: starting anyway, and what devices send before the hub subscribes is lost");
    }
    let rollouts = Arc::new(crate::rollout::Rollouts::new(
        registry.clone(),
        fleet.clone(),
        telemetry.clone(),
        Some(mqtt.clone()),
    ));
    let controller = rollouts.clone();
    // Each step resumes every active rollout where its stored state left it.
    spawn_periodic(
        "rollout controller step",
        Duration::from_secs(config.rollouts.tick_seconds),
        move || {
            let controller = controller.clone();
            async move {
                controller.tick().await;
                Ok::<(), Infallible>(())
            }
        },
    );
    let triggers = Arc::new(crate::triggers::Triggers::new(
        registry.clone(),
        telemetry.clone(),
        advertise_url,
        data_dir.join("triggers"),
        config.triggers.allow_commands,
        Some(HubCa::certificate_path(&folder.keys())),
    ));
    triggers.recover()?;
    triggers
        .clone()
        .spawn(Duration::from_secs(config.triggers.tick_seconds));
    let hub_metrics = metrics.clone();
    let state = ApiState {
        registry,
        max_upload_bytes: config.max_upload_bytes,
        upload_dir: folder.uploads(),
        fleet: Some(fleet),
        mqtt: Some(mqtt),
        broker: embedded_broker,
        metrics,
        telemetry: Some(telemetry),
        rollouts: Some(rollouts),
        triggers: Some(triggers),
        device_certificates_required: api_tls.is_some(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let connections = ConnectionCap::new(config.max_connections);
    let _ = hub_metrics.api_connections.set(connections.clone());
    let listener = Capped::new(ApiListener::new(listeners.api, api_tls)?, connections);
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Ok(RunningHub {
        url: format!("{scheme}://{address}"),
        mqtt: advertise_mqtt,
        quic: quic_advertised,
        metrics: hub_metrics,
        stop,
        server,
    })
}

/// Writes the hub's certificate and key where the embedded broker reads them (rmqtt takes
/// file paths); the key with mode 0600, beside the hub's other keys.
fn broker_tls_files(
    folder: &DataDir,
    identity: &crate::ca::IssuedIdentity,
) -> anyhow::Result<BrokerTls> {
    let keys = folder.keys();
    let files = BrokerTls {
        certificate: keys.join("server.crt"),
        key: keys.join("server.key"),
        client_ca: HubCa::certificate_path(&keys),
    };
    crate::data_dir::write_secret(&files.certificate, &identity.chain_pem)?;
    crate::data_dir::write_secret(&files.key, &identity.key_pem)?;
    Ok(files)
}

/// The names the hub's certificate is valid for: loopback, the address the API listens on
/// and the embedded broker (unless they are wildcards), the hosts of the advertised URL and
/// broker address, and `[tls] names`.
fn certificate_names(config: &HubConfig, address: SocketAddr, advertise_url: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !address.ip().is_unspecified() {
        names.push(address.ip().to_string());
    }
    if let Ok(base) = flotilla_api::http::BaseUrl::parse(advertise_url) {
        names.push(base.server_name().to_owned());
    }
    // Devices check the broker's name too: where it listens, and where they are told it is.
    if !config.broker.listen.ip().is_unspecified() {
        names.push(config.broker.listen.ip().to_string());
    }
    if let Some((host, _)) = config
        .broker
        .advertise
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
    {
        names.push(host.trim_matches(['[', ']']).to_owned());
    }
    names.extend(config.tls.names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_serve_flag_is_told_its_setting() {
        let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let hint = moved_flag_hint(&args(
            "flotilla-hub serve --data-dir /d --mqtt-url mqtt://h:1",
        ))
        .unwrap();
        assert!(
            hint.contains("no longer takes --mqtt-url")
                && hint.contains("`[broker] url`")
                && hint.contains("flotilla-hub config default"),
            "{hint}"
        );
        let hint = moved_flag_hint(&args("flotilla-hub serve --rollout-tick-seconds=1")).unwrap();
        assert!(hint.contains("`[rollouts] tick_seconds`"), "{hint}");
        assert_eq!(
            moved_flag_hint(&args("flotilla-hub serve --data-dir /d --bogus")),
            None
        );
        assert_eq!(moved_flag_hint(&args("flotilla-hub init --listen x")), None);
    }

    #[test]
    fn every_moved_flag_names_a_real_setting() {
        let reference = crate::config_reference::reference();
        let keys: Vec<String> = reference
            .top_level
            .iter()
            .map(|s| s.key.clone())
            .chain(reference.tables.iter().flat_map(|t| {
                t.settings
                    .iter()
                    .map(move |s| format!("[{}] {}", t.name, s.key))
            }))
            .collect();
        for (flag, key) in MOVED_SERVE_FLAGS {
            let key = key.split(" = ").next().unwrap();
            assert!(
                keys.iter().any(|k| k == key),
                "{flag} names {key}, not a setting"
            );
        }
        assert_eq!(
            MOVED_SERVE_FLAGS.len(),
            16,
            "ServeArgs had 18 flags; 2 stay flags"
        );
    }

    #[test]
    fn log_level_wins_over_the_environment_and_a_bad_one_is_refused() {
        assert_eq!(log_filter(Some("debug")).unwrap().to_string(), "debug");
        let message = log_filter(Some("flotilla_hub=loud"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("--log-level \"flotilla_hub=loud\" is not a log filter"),
            "{message}"
        );
    }
}
