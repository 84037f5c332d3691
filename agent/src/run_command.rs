//! `flotilla-agent run --config agent.toml`: a device following its hub. Enrolls on first
//! start, serves what is installed at once, then follows the signed desired state.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_common::clock::{SharedClock, Stopwatch, SystemClock};
use flotilla_common::retry::{RetryDecision, RetryPolicy, retry};
use flotilla_common::signing::{SigningKey, prove_enrollment};
use flotilla_common::systemd::{Notifier, StopSignals};
use flotilla_common::trust::verify_initial_root;
use flotilla_proto::control::EnrollRequest;

use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::repository::ModelRepository;
use crate::server::{AppState, start};
use crate::store::AgentStore;
use crate::sync::{InstallFolders, InstalledModelSettings, Syncer};
use crate::telemetry::Telemetry;
use crate::transport::http::{HttpError, HubHttp};
use crate::transport::mqtt::{AgentMqtt, StatusOrigin};
use crate::transport::tls;
use flotilla_runtime::init_onnx_runtime;

/// `run`'s settings: the one agent config (`serve` loads the same struct). The name stays
/// for embedders (fleet-sim, benchmarks) that build one in code.
pub type RunConfig = AgentConfig;

/// A device that cannot reach its hub yet keeps trying, 500 ms doubling to a minute apart;
/// only the hub refusing the token ends it.
const ENROLLMENT_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(500),
    max: Duration::from_secs(60),
    attempts: None,
};

fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return SigningKey::from_hex(&text)
            .with_context(|| format!("device key {} is damaged", path.display()));
    }
    let key = SigningKey::generate()?;
    let folder = path.parent().expect("key path has a folder");
    let mut file = tempfile::NamedTempFile::new_in(folder)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(key.to_hex().as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    tracing::info!(key_id = %key.key_id(), "device key created");
    Ok(key)
}

fn detected_hardware(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut hardware = BTreeMap::from([
        ("arch".to_owned(), std::env::consts::ARCH.to_owned()),
        ("os".to_owned(), std::env::consts::OS.to_owned()),
        (
            "cpus".to_owned(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string(),
        ),
    ]);
    hardware.extend(extra.clone());
    hardware
}

/// Why an in-process inference did not answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreInferError {
    /// The model is not served (yet): nothing was recorded.
    #[error("not served: {0}")]
    NotServed(String),
    /// The model ran and failed (or was busy): recorded as an error in its window.
    #[error("failed: {0}")]
    Failed(String),
}

/// One agent core: everything a device does (enrollment, local inference server when
/// listeners are configured, following the hub), without the process around it. The binary
/// runs one; fleet-sim and benchmarks run thousands in one process.
#[derive(Debug)]
pub struct AgentCore {
    pub device_id: String,
    pub repository: Arc<ModelRepository>,
    pub store: Arc<AgentStore>,
    server: crate::server::RunningServer,
    mqtt: AgentMqtt,
    sync: tokio::task::JoinHandle<()>,
    /// Renews the device certificate when a third of its life is left.
    renewal: tokio::task::JoinHandle<()>,
    pub telemetry: Telemetry,
}

impl AgentCore {
    /// The line the binary prints once it serves.
    pub fn ready_line(&self) -> String {
        let mut ready = format!("flotilla-agent ready device={}", self.device_id);
        if let Some(path) = &self.server.socket {
            ready.push_str(&format!(" socket={}", path.display()));
        }
        if let Some(address) = self.server.http {
            ready.push_str(&format!(" http={address}"));
        }
        ready
    }

    /// Stops following the hub and lets in-flight local requests finish.
    /// Runs one inference in this process, as the local server would (same model lookup,
    /// same telemetry), for embedders without a socket (fleet-sim). Inputs must fit the
    /// model's signature. Returns the version that answered and the outputs.
    pub async fn infer(
        &self,
        model: &str,
        inputs: Vec<flotilla_runtime::NamedTensor>,
    ) -> Result<(u64, Vec<flotilla_runtime::NamedTensor>), CoreInferError> {
        let started = Stopwatch::start();
        let loaded = self
            .repository
            .get(model, None)
            .map_err(|e| CoreInferError::NotServed(e.to_string()))?;
        let features = loaded
            .feature_map
            .as_ref()
            .and_then(|map| crate::telemetry::extract_features(map, &inputs));
        let all_outputs = loaded
            .signature
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect();
        let result = loaded.infer(inputs, all_outputs).await;
        let outcome = match &result {
            Ok(outputs) => Ok((features, outputs.clone())),
            Err(flotilla_runtime::InferError::Busy { .. }) => Err("busy"),
            Err(_) => Err("inference_failed"),
        };
        crate::telemetry::record_request(
            &self.telemetry.recorder,
            &loaded,
            outcome,
            started.elapsed(),
        );
        result
            .map(|outputs| (loaded.version, outputs))
            .map_err(|e| CoreInferError::Failed(e.to_string()))
    }

    /// Stops the way `kill -9` would: the open window is not sealed (a seal already under way
    /// finishes, as a committed SQLite write would), no goodbye to the broker (which then
    /// publishes the last will). What was spooled stays for the next start on the same
    /// state folder. For fleet-sim's crash faults.
    pub async fn crash(self) {
        self.sync.abort();
        self.renewal.abort();
        let telemetry = self.telemetry;
        let _ = tokio::task::spawn_blocking(move || telemetry.halt()).await;
        self.mqtt.drop_connection();
        self.server.shutdown();
        self.server.wait().await;
    }

    /// True while the sync loop runs (it ends only by panicking).
    pub fn is_following_the_hub(&self) -> bool {
        !self.sync.is_finished()
    }

    /// Stops following the hub and lets in-flight local requests finish; the open
    /// telemetry window is sealed into the spool, to be sent after the next start.
    pub async fn stop(self) {
        self.sync.abort();
        self.renewal.abort();
        self.server.shutdown();
        self.server.wait().await;
        self.telemetry.stop();
        let telemetry = self.telemetry;
        let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
        self.mqtt.stop();
    }
}

/// The device's key, state database and enrollment.
#[derive(Debug)]
pub struct Enrolled {
    pub key: Arc<SigningKey>,
    pub store: Arc<AgentStore>,
    pub enrollment: flotilla_proto::control::EnrollResponse,
}

/// Makes the device key on first start and enrolls with the hub unless the state folder
/// says this device already has (then nothing is sent). `flotilla-agent enroll` is this
/// alone, for install scripts that should fail loudly on a bad token.
pub async fn enroll_once(config: &RunConfig, clock: &SharedClock) -> anyhow::Result<Enrolled> {
    let (hub, state_dir) = config.hub_and_state_dir()?;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state folder {}", state_dir.display()))?;
    let key = Arc::new(load_or_create_key(&state_dir.join("device.key"))?);
    let store = Arc::new(AgentStore::open(&state_dir.join("agent.db"))?);
    let enrollment = match store.enrollment()? {
        Some(enrollment) => enrollment,
        None => {
            let token = config.enrollment_token.clone().context("this device is not enrolled: set enrollment_token in the config (flotilla enroll-token create makes one)")?;
            let http = HubHttp::new(hub, Some(tls::for_enrollment(&token)?))?;
            let mut request = EnrollRequest {
                token,
                public_key: key.public_key(),
                hardware: detected_hardware(&config.hardware),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                proof: String::new(),
            };
            prove_enrollment(&mut request, &key);
            let enrollment = retry(
                &ENROLLMENT_RETRY,
                |_| http.enroll(&request),
                |error, failed| {
                    if matches!(error, HttpError::Refused { .. } | HttpError::Untrusted { .. }) {
                        return RetryDecision::Stop;
                    }
                    if let Some(delay) = failed.retry_in {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot enroll yet");
                    }
                    RetryDecision::Retry
                },
            )
            .await
            .map_err(|error| match error {
                HttpError::Refused { status, message } => {
                    anyhow::anyhow!("enrollment refused ({status}): {message}")
                }
                untrusted @ HttpError::Untrusted { .. } => anyhow::anyhow!(
                    "enrollment refused: {untrusted}; the enrollment token pins the hub's CA after its last '.': use a token this hub made (flotilla enroll-token create)"
                ),
                other => anyhow::Error::new(other).context("cannot enroll"),
            })?;
            tls::check_enrolled_ca(&request.token, &enrollment).map_err(anyhow::Error::msg)?;
            verify_initial_root(&enrollment.root, clock.now_unix())
                .context("the hub's root metadata does not verify")?;
            store.set_enrollment(&enrollment)?;
            tracing::info!(device = %enrollment.device_id, "enrolled");
            enrollment
        }
    };
    Ok(Enrolled {
        key,
        store,
        enrollment,
    })
}

/// Starts an agent core: key, enrollment (first start), restore what was served, local
/// listeners, MQTT and the sync loop. The core reads time from `clock` (moved by the
/// injected skew, if any).
pub async fn start_core(config: &RunConfig, clock: SharedClock) -> anyhow::Result<AgentCore> {
    let clock = config.faults.device_clock(clock);
    let state_dir = config.hub_and_state_dir()?.1;
    init_onnx_runtime(config.ort_lib.as_deref())?;
    let Enrolled {
        key,
        store,
        enrollment,
    } = enroll_once(config, &clock).await?;
    let trusted_root = store.root()?.unwrap_or_else(|| enrollment.root.clone());
    let root = verify_initial_root(&trusted_root, clock.now_unix())
        .context("the trusted root metadata no longer verifies")?;

    let settings = InstalledModelSettings {
        sessions: config.sessions,
        intra_op_threads: config.intra_op_threads,
        queue_depth: config.queue_depth,
        engine: config.engine.clone(),
    };
    let models_dir = state_dir.join("models");
    let repository = Arc::new(tokio::task::spawn_blocking(|| ModelRepository::load(&[])).await??);
    Syncer::restore_serving(&repository, &store, &models_dir, &settings)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut telemetry = Telemetry::open(
        &config.telemetry,
        state_dir,
        &enrollment.device_id,
        key.clone(),
        clock.clone(),
    );
    let state = AppState {
        repository: repository.clone(),
        metrics: Arc::new(Metrics::default()),
        max_body_bytes: config.max_body_bytes,
        telemetry: Some(telemetry.recorder.clone()),
        telemetry_status: Some(telemetry.status.clone()),
        connections: None,
    };
    let server = start(config, state).await?;

    let mut enrollment = enrollment;
    if let Err(error) = renew_certificate_if_due(&store, &key, &clock, &mut enrollment).await {
        tracing::warn!(%error, "cannot renew the device certificate yet; trying again later");
    }
    let device_tls = tls::for_enrolled(&enrollment, &key)?;
    let (desired_tx, desired_rx) = tokio::sync::mpsc::channel(16);
    let (acks_tx, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let mqtt = AgentMqtt::start(
        config.mqtt.as_deref().unwrap_or(&enrollment.mqtt),
        enrollment.mqtt_tls.then(|| device_tls.clone()),
        &enrollment.device_id,
        key.clone(),
        StatusOrigin {
            connected_at: clock.now_unix(),
            generation: store.next_status_generation()?,
        },
        desired_tx,
        acks_tx,
        Duration::from_secs(config.heartbeat_seconds),
    )
    .map_err(anyhow::Error::msg)?;
    telemetry.start(mqtt.clone(), acks_rx, &config.telemetry);
    let artifacts = HubHttp::new(&enrollment.artifacts_http, Some(device_tls))?;
    let quic = match (
        &enrollment.artifacts_quic,
        &enrollment.quic_certificate_sha256,
    ) {
        (Some(address), Some(pin)) => {
            let quic = crate::transport::quic::QuicArtifacts::new(address, pin)?;
            quic.set_identity(&tls::device_identity(&enrollment, &key)?)?;
            Some(quic)
        }
        _ => None,
    };
    let renewal = tokio::spawn(keep_certificate_renewed(
        store.clone(),
        key.clone(),
        clock.clone(),
        enrollment.clone(),
        artifacts.clone(),
        mqtt.clone(),
        quic.clone(),
    ));
    let syncer = Syncer {
        device_id: enrollment.device_id.clone(),
        key,
        root: std::sync::RwLock::new(root),
        store: store.clone(),
        repository: repository.clone(),
        http: artifacts,
        quic,
        mqtt: mqtt.clone(),
        folders: InstallFolders {
            models: models_dir,
            downloads: state_dir.join("downloads"),
        },
        settings,
        faults: config.faults,
        clock,
    };
    let sync = tokio::spawn(syncer.run(desired_rx));
    Ok(AgentCore {
        device_id: enrollment.device_id,
        repository,
        store,
        server,
        mqtt,
        sync,
        renewal,
        telemetry,
    })
}

/// How often a running agent checks whether its certificate is due for renewal.
const RENEWAL_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Renews the device certificate when it is due (`tls::renewal_due`): asks the hub with a
/// renewal signed by the device key, over TLS that trusts the hub's CA and presents nothing
/// (the current certificate may have lapsed), and stores the new one. Whether it renewed.
async fn renew_certificate_if_due(
    store: &AgentStore,
    key: &SigningKey,
    clock: &SharedClock,
    enrollment: &mut flotilla_proto::control::EnrollResponse,
) -> anyhow::Result<bool> {
    use flotilla_proto::control::{CertificateRenewal, RENEWAL_PAYLOAD_TYPE};
    let now = clock.now_unix();
    if !tls::renewal_due(enrollment.certificate_expires, now) {
        return Ok(false);
    }
    let http = HubHttp::new(
        &enrollment.artifacts_http,
        Some(tls::for_renewal(enrollment)?),
    )?;
    let renewal = flotilla_common::signing::sign_envelope(
        RENEWAL_PAYLOAD_TYPE,
        serde_json::to_string(&CertificateRenewal {
            device_id: enrollment.device_id.clone(),
            at: now,
        })
        .expect("a renewal serializes"),
        &[key],
    );
    let renewed = http
        .renew_certificate(&enrollment.device_id, &renewal)
        .await?;
    enrollment.certificate = renewed.certificate;
    enrollment.certificate_expires = renewed.certificate_expires;
    store.set_enrollment(enrollment)?;
    tracing::info!(
        expires = enrollment.certificate_expires,
        "device certificate renewed"
    );
    Ok(true)
}

/// Checks every few hours and renews when due; downloads use the new certificate at once,
/// the broker connection from its next reconnect.
async fn keep_certificate_renewed(
    store: Arc<AgentStore>,
    key: Arc<SigningKey>,
    clock: SharedClock,
    mut enrollment: flotilla_proto::control::EnrollResponse,
    artifacts: HubHttp,
    mqtt: AgentMqtt,
    quic: Option<crate::transport::quic::QuicArtifacts>,
) {
    loop {
        tokio::time::sleep(RENEWAL_CHECK_EVERY).await;
        match renew_certificate_if_due(&store, &key, &clock, &mut enrollment).await {
            Ok(true) => match tls::for_enrolled(&enrollment, &key) {
                Ok(config) => {
                    if enrollment.mqtt_tls {
                        mqtt.replace_tls(config.clone());
                    }
                    let identity = tls::device_identity(&enrollment, &key);
                    if let (Some(quic), Ok(identity)) = (&quic, identity)
                        && let Err(error) = quic.set_identity(&identity)
                    {
                        tracing::error!(%error, "QUIC cannot use the renewed certificate");
                    }
                    artifacts.replace_tls(config)
                }
                Err(error) => tracing::error!(%error, "the renewed certificate cannot be used"),
            },
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot renew the device certificate yet; trying again later")
            }
        }
    }
}

/// `flotilla-agent run`: one core until SIGTERM or SIGINT, at any phase. Under systemd
/// (`Type=notify`) it says READY once it serves and pings the watchdog while its sync loop
/// lives.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let systemd = Notifier::from_env();
    systemd.status("starting: enrolling with the hub and restoring models");
    // Starting can wait long (enrollment retries against an unreachable hub, with backoff).
    // A stop asked meanwhile drops the start at its next await; what it wrote so far is
    // whole at every await (the key and the enrollment are written in one step each, and
    // the hub answers a device that repeats its enrollment with the same token again).
    let core = tokio::select! {
        core = start_core(&config, SystemClock::shared()) => core?,
        _ = signals.recv() => return stopped_while_starting(&systemd),
    };
    // Scripts and tests wait for this line on stdout.
    println!("{}", core.ready_line());
    systemd.ready(&core.ready_line());
    // A sync loop that ended (it only ends by panicking) is a hung agent to systemd.
    systemd
        .serve_until_stopped(&mut signals, || core.is_following_the_hub())
        .await;
    tracing::info!("shutting down: finishing in-flight requests");
    core.stop().await;
    Ok(())
}

/// `flotilla-agent enroll`: enrolls (unless already enrolled) within `timeout` and prints
/// `enrolled device=ID`.
pub async fn enroll(config: RunConfig, timeout: Duration) -> anyhow::Result<()> {
    let clock = SystemClock::shared();
    let enrolled = tokio::time::timeout(timeout, enroll_once(&config, &clock))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "could not reach the hub {} within {} s",
                config.hub.as_deref().unwrap_or_default(),
                timeout.as_secs()
            )
        })??;
    println!("enrolled device={}", enrolled.enrollment.device_id);
    Ok(())
}

fn stopped_while_starting(systemd: &Notifier) -> anyhow::Result<()> {
    systemd.stopping();
    tracing::info!("stopped while starting");
    Ok(())
}
