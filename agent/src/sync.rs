//! Following the hub: accept a signed desired state, install what it names step by step
//! (`install.rs` decides the order), and report. Serving never stops: a failed install keeps
//! the running version, and the report says which step failed and why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::backoff::{backoff_delay, random_jitter};
use flotilla_common::clock::{SharedClock, SkewedClock};
use flotilla_common::signing::{SigningKey, sign_envelope, verify_envelope};
use flotilla_common::trust::verify_manifest;
use flotilla_proto::control::{
    DESIRED_PAYLOAD_TYPE, DesiredModel, DesiredState, InstallOutcome, InstallState,
    REPORTED_PAYLOAD_TYPE, ReportedState,
};
use flotilla_proto::telemetry::FeatureMap;
use flotilla_proto::trust::{Envelope, ModelManifest, RootMetadata};
use tokio::sync::mpsc;

use crate::config::ModelConfig;
use crate::install::{Progress, Step, after, installs_needed};
use crate::repository::{ModelRepository, VERSION_FILE_NAME};
use crate::store::AgentStore;
use crate::transport::http::HubHttp;
use crate::transport::mqtt::AgentMqtt;

/// Faults a simulator injects into real installs (fleet-sim); none on a real device. Each
/// is a real failure the install steps must catch, not a made-up outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InjectedFaults {
    /// Share of downloads damaged on disk after they arrive (one byte flipped): the artifact
    /// check must reject them.
    pub corrupt_download: f64,
    /// Share of installs whose model file is overwritten with garbage after the artifact
    /// check (a device whose storage fails under it): loading must reject them.
    pub unloadable_install: f64,
    /// How far the device's clock is off, in milliseconds (positive: ahead).
    pub clock_skew_ms: i64,
}

impl InjectedFaults {
    /// The device's clock: `base` moved by the injected skew, if any.
    pub fn device_clock(&self, base: SharedClock) -> SharedClock {
        SkewedClock::shared(base, self.clock_skew_ms)
    }
}

fn happens(rate: f64) -> bool {
    rate > 0.0 && flotilla_common::backoff::random_jitter() < rate
}

/// Flips one byte in the middle of a file.
fn damage(path: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    if let Some(middle) = bytes.len().checked_div(2).filter(|_| !bytes.is_empty()) {
        bytes[middle] ^= 0x5a;
    }
    std::fs::write(path, bytes)
}

/// Sessions and threads for models the hub installs.
#[derive(Debug, Clone)]
pub struct InstalledModelSettings {
    pub sessions: Option<usize>,
    pub intra_op_threads: Option<usize>,
    pub queue_depth: Option<usize>,
    pub engine: flotilla_runtime::Engine,
}

#[derive(Debug)]
pub struct Syncer {
    pub device_id: String,
    pub key: Arc<SigningKey>,
    /// The trusted root; replaced by the next version when the hub rotates its keys.
    pub root: std::sync::RwLock<RootMetadata>,
    pub store: Arc<AgentStore>,
    pub repository: Arc<ModelRepository>,
    pub http: HubHttp,
    /// QUIC downloads, when the hub offers them; HTTP ranges otherwise or when UDP fails.
    pub quic: Option<crate::transport::quic::QuicArtifacts>,
    pub mqtt: AgentMqtt,
    pub models_dir: PathBuf,
    pub downloads_dir: PathBuf,
    pub settings: InstalledModelSettings,
    pub faults: InjectedFaults,
    /// The device's clock: expiry checks and report times.
    pub clock: SharedClock,
}

impl Syncer {
    pub fn model_config(
        models_dir: &Path,
        name: &str,
        settings: &InstalledModelSettings,
    ) -> ModelConfig {
        ModelConfig {
            name: name.to_owned(),
            path: models_dir.join(name),
            sessions: settings.sessions,
            intra_op_threads: settings.intra_op_threads,
            queue_depth: settings.queue_depth,
            engine: settings.engine.clone(),
        }
    }

    /// Serves what was installed before this start, at the versions recorded as serving.
    pub async fn restore_serving(
        repository: &ModelRepository,
        store: &AgentStore,
        models_dir: &Path,
        settings: &InstalledModelSettings,
    ) -> Result<(), String> {
        for (name, version) in store.serving().map_err(|e| e.to_string())? {
            repository.add_source(&Self::model_config(models_dir, &name, settings));
            let report = repository.reload(Some(&name)).await;
            for error in report.errors {
                tracing::warn!("restoring {name}: {error}");
            }
            repository
                .pin(&name, version)
                .map_err(|e| format!("cannot serve {name} version {version} after restart: {e}"))?;
        }
        Ok(())
    }

    pub async fn run(self, mut desired: mpsc::Receiver<Vec<u8>>) {
        while let Some(payload) = desired.recv().await {
            let mut accepted = self.accept_desired(&payload);
            if matches!(&accepted, Err(reason) if reason.starts_with("signature"))
                && self.refresh_root().await
            {
                // Signed by a key the trusted root does not name: the hub may have rotated.
                accepted = self.accept_desired(&payload);
            }
            match accepted {
                Ok(Some(state)) => {
                    for entry in
                        installs_needed(&state.models, &self.store.serving().unwrap_or_default())
                    {
                        let outcome = self.install(entry).await;
                        if let Err(error) = self.store.record_outcome(&outcome) {
                            tracing::error!(%error, "cannot record the install outcome");
                        }
                        self.report(state.sequence).await;
                    }
                    self.report(state.sequence).await;
                }
                Ok(None) => {
                    tracing::info!("ignoring a desired state older than the one already followed")
                }
                Err(reason) => tracing::warn!(%reason, "desired state refused"),
            }
        }
    }

    fn trusted_root(&self) -> RootMetadata {
        self.root.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Walks the hub's root metadata from the trusted version upwards, one version at a time,
    /// each checked against the one before (DESIGN.md section 4) and stored only after it
    /// passed. Returns whether the trusted root changed.
    pub async fn refresh_root(&self) -> bool {
        let mut changed = false;
        loop {
            let trusted = self.trusted_root();
            let next = match self.http.root(trusted.version + 1).await {
                Ok(Some(envelope)) => envelope,
                Ok(None) => return changed,
                Err(error) => {
                    tracing::warn!(%error, "cannot fetch root metadata");
                    return changed;
                }
            };
            match flotilla_common::trust::verify_root_update(&trusted, &next, self.clock.now_unix())
            {
                Ok(root) => {
                    if let Err(error) = self.store.set_root(&next) {
                        tracing::error!(%error, "cannot store the new root");
                        return changed;
                    }
                    tracing::info!(
                        version = root.version,
                        "trusting the hub's rotated root metadata"
                    );
                    *self.root.write().unwrap_or_else(|e| e.into_inner()) = root;
                    changed = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "the hub's next root metadata does not verify; keeping the trusted one");
                    return changed;
                }
            }
        }
    }

    /// Checks a desired state before anything is trusted or stored: hub signature, this
    /// device, unexpired, not older than the newest one followed. `None` for an older one.
    pub fn accept_desired(&self, payload: &[u8]) -> Result<Option<DesiredState>, String> {
        let envelope: Envelope =
            serde_json::from_slice(payload).map_err(|e| format!("not an envelope: {e}"))?;
        let root = self.trusted_root();
        verify_envelope(
            &envelope,
            DESIRED_PAYLOAD_TYPE,
            &root.signing_keys,
            root.signing_threshold,
        )
        .map_err(|e| format!("signature: {e}"))?;
        let state: DesiredState =
            serde_json::from_str(&envelope.payload).map_err(|e| format!("payload: {e}"))?;
        let now = self.clock.now_unix();
        if state.device_id != self.device_id {
            return Err(format!(
                "it is for device {}, not {}",
                state.device_id, self.device_id
            ));
        }
        if state.expires <= now || root.expires <= now {
            return Err(format!(
                "it expired at {} (root at {}); the hub must re-sign",
                state.expires, root.expires
            ));
        }
        let followed = self.store.desired_sequence().map_err(|e| e.to_string())?;
        if state.sequence < followed {
            return Ok(None);
        }
        self.store
            .set_desired_sequence(state.sequence)
            .map_err(|e| e.to_string())?;
        Ok(Some(state))
    }

    fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.models_dir.join(model).join(version.to_string())
    }

    /// Runs the install steps in order; the first failure ends it.
    pub async fn install(&self, entry: &DesiredModel) -> InstallOutcome {
        tracing::info!(model = %entry.name, version = entry.version, "installing");
        let mut manifest: Option<ModelManifest> = None;
        let replaced = self
            .store
            .serving()
            .unwrap_or_default()
            .get(&entry.name)
            .copied();
        let mut step = Step::FIRST;
        loop {
            let result = self.run_step(step, entry, &mut manifest).await;
            match after(step, result) {
                Progress::Next(next) => step = next,
                Progress::Installed => {
                    let outcome = self.outcome(entry, InstallState::Installed, None, None);
                    let document_version =
                        manifest.as_ref().map(|m| m.document_version).unwrap_or(0);
                    if let Err(error) = self.store.record_installed(
                        &entry.name,
                        entry.version,
                        document_version,
                        &outcome,
                    ) {
                        tracing::error!(%error, "cannot record the install");
                    }
                    self.clean_up(&entry.name, entry.version, replaced).await;
                    tracing::info!(model = %entry.name, version = entry.version, "installed and serving");
                    return outcome;
                }
                Progress::Failed { step, reason } => {
                    tracing::warn!(model = %entry.name, version = entry.version, step = step.name(), %reason, "install failed; still serving the previous version");
                    if matches!(step, Step::Load | Step::SmokeTest) {
                        // Never leave a version that failed its checks where it could be served.
                        let _ =
                            std::fs::remove_dir_all(self.version_dir(&entry.name, entry.version));
                        self.repository.reload(Some(&entry.name)).await;
                    }
                    return self.outcome(
                        entry,
                        InstallState::Failed,
                        Some(step.name().to_owned()),
                        Some(reason),
                    );
                }
            }
        }
    }

    fn outcome(
        &self,
        entry: &DesiredModel,
        state: InstallState,
        step: Option<String>,
        reason: Option<String>,
    ) -> InstallOutcome {
        InstallOutcome {
            model: entry.name.clone(),
            version: entry.version,
            state,
            step,
            reason,
            at: self.clock.now_unix(),
        }
    }

    async fn run_step(
        &self,
        step: Step,
        entry: &DesiredModel,
        manifest: &mut Option<ModelManifest>,
    ) -> Result<(), String> {
        match step {
            Step::VerifyManifest => {
                let trusted = self.store.trusted(&entry.name).map_err(|e| e.to_string())?;
                let checked = verify_manifest(
                    &self.trusted_root(),
                    &entry.manifest,
                    self.clock.now_unix(),
                    trusted,
                    entry.rollback,
                )
                .map_err(|e| e.to_string())?;
                if checked.model != entry.name || checked.version != entry.version {
                    return Err(format!(
                        "manifest is for {} version {}, desired state says {} version {}",
                        checked.model, checked.version, entry.name, entry.version
                    ));
                }
                *manifest = Some(checked);
                Ok(())
            }
            Step::Download => {
                let m = manifest.as_ref().expect("verified before download");
                let installed = self
                    .version_dir(&m.model, m.version)
                    .join(VERSION_FILE_NAME);
                if crate::transport::http::file_sha256(&installed)
                    .is_ok_and(|(sha, _)| sha == m.artifact_sha256)
                {
                    return write_feature_map(&installed, m.features.as_ref())
                        .map_err(|e| format!("cannot write the feature map: {e}"));
                }
                std::fs::create_dir_all(&self.downloads_dir)
                    .map_err(|e| format!("cannot create {}: {e}", self.downloads_dir.display()))?;
                let part = self
                    .downloads_dir
                    .join(format!("{}.part", m.artifact_sha256));
                self.fetch(&m.model, &m.artifact_sha256, &part, m.artifact_size)
                    .await?;
                if happens(self.faults.corrupt_download) {
                    damage(&part).map_err(|e| format!("injected fault: {e}"))?;
                }
                Ok(())
            }
            Step::CheckArtifact => {
                let m = manifest
                    .as_ref()
                    .expect("verified before the artifact check");
                let target_dir = self.version_dir(&m.model, m.version);
                let installed = target_dir.join(VERSION_FILE_NAME);
                if crate::transport::http::file_sha256(&installed)
                    .is_ok_and(|(sha, _)| sha == m.artifact_sha256)
                {
                    return Ok(());
                }
                let part = self
                    .downloads_dir
                    .join(format!("{}.part", m.artifact_sha256));
                let (sha, size) = crate::transport::http::file_sha256(&part)
                    .map_err(|e| format!("cannot read the download: {e}"))?;
                if size != m.artifact_size || sha != m.artifact_sha256 {
                    let _ = std::fs::remove_file(&part);
                    return Err(format!(
                        "artifact does not match its signed manifest (sha256 {sha}, {size} bytes; manifest says {}, {} bytes): tampered or corrupted, discarded",
                        m.artifact_sha256, m.artifact_size
                    ));
                }
                place_verified(&part, &target_dir, m.features.as_ref())
                    .map_err(|e| format!("cannot install the artifact: {e}"))?;
                if happens(self.faults.unloadable_install) {
                    std::fs::write(&installed, b"injected fault: not a model")
                        .map_err(|e| format!("injected fault: {e}"))?;
                }
                Ok(())
            }
            Step::Load => {
                self.repository.add_source(&Self::model_config(
                    &self.models_dir,
                    &entry.name,
                    &self.settings,
                ));
                let report = self.repository.reload(Some(&entry.name)).await;
                if let Some(error) = report
                    .errors
                    .iter()
                    .find(|e| e.contains(&format!("version {}", entry.version)))
                {
                    return Err(error.clone());
                }
                self.repository
                    .get(&entry.name, Some(&entry.version.to_string()))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Step::SmokeTest => {
                let model = self
                    .repository
                    .get(&entry.name, Some(&entry.version.to_string()))
                    .map_err(|e| e.to_string())?;
                model.smoke_test().await.map_err(|e| e.to_string())
            }
            Step::Switch => self
                .repository
                .pin(&entry.name, entry.version)
                .map_err(|e| e.to_string()),
        }
    }

    /// Fetches an artifact into `part` (the raw file). Over QUIC when the hub offers it:
    /// first as a zstd patch against the version being served (when the hub made one), then
    /// zstd-compressed, then raw; each form resumes from the bytes on disk. When QUIC cannot
    /// connect at all (UDP blocked), over HTTP ranges. Decompression is bounded by the
    /// manifest's size.
    async fn fetch(&self, model: &str, sha256: &str, part: &Path, size: u64) -> Result<(), String> {
        if let Some(quic) = &self.quic {
            match self.fetch_quic(quic, model, sha256, part, size).await {
                QuicOutcome::Done => return Ok(()),
                QuicOutcome::Failed(reason) => return Err(reason),
                QuicOutcome::Unavailable(reason) => {
                    tracing::warn!(%reason, "QUIC unavailable; falling back to HTTP ranges")
                }
            }
        }
        let mut attempt = 0;
        loop {
            match self.http.download(sha256, part, size).await {
                Ok(()) => {
                    tracing::info!(sha256, size, "downloaded over HTTP");
                    return Ok(());
                }
                Err(error @ crate::transport::http::HttpError::TooLarge { .. }) => {
                    return Err(error.to_string());
                }
                Err(error) if attempt >= 4 => return Err(error.to_string()),
                Err(error) => {
                    let delay = backoff_delay(
                        attempt,
                        Duration::from_millis(200),
                        Duration::from_secs(10),
                        random_jitter(),
                    );
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "download interrupted; resuming");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The artifact this device serves for `model` now, as a patch base: (sha256, path).
    fn serving_artifact(&self, model: &str) -> Option<(String, PathBuf)> {
        let version = *self.store.serving().ok()?.get(model)?;
        let path = self.version_dir(model, version).join(VERSION_FILE_NAME);
        let (sha, _) = crate::transport::http::file_sha256(&path).ok()?;
        Some((sha, path))
    }

    async fn fetch_quic(
        &self,
        quic: &crate::transport::quic::QuicArtifacts,
        model: &str,
        sha256: &str,
        part: &Path,
        size: u64,
    ) -> QuicOutcome {
        use crate::transport::quic::QuicError;
        use flotilla_common::artifact_protocol::Encoding;
        let mut forms: Vec<(Encoding, Option<PathBuf>)> = Vec::new();
        if let Some((base_sha256, base)) = self
            .serving_artifact(model)
            .filter(|(base, _)| base != sha256)
        {
            forms.push((Encoding::Patch { base_sha256 }, Some(base)));
        }
        forms.push((Encoding::Zstd, None));
        forms.push((Encoding::Raw, None));
        let mut connected = false;
        for (encoding, reference) in forms {
            let form_part = if encoding == Encoding::Raw {
                part.to_path_buf()
            } else {
                self.downloads_dir
                    .join(format!("{sha256}.{}.part", encoding.label()))
            };
            let mut attempt = 0;
            loop {
                match quic.download(sha256, &encoding, &form_part, size).await {
                    Ok(()) => {
                        let transferred =
                            std::fs::metadata(&form_part).map(|m| m.len()).unwrap_or(0);
                        if encoding != Encoding::Raw {
                            if let Err(error) = decode(&form_part, reference.as_deref(), part, size)
                            {
                                tracing::warn!(%error, form = %encoding.label(), "cannot decode the download; trying another form");
                                let _ = std::fs::remove_file(&form_part);
                                break;
                            }
                            let _ = std::fs::remove_file(&form_part);
                        }
                        tracing::info!(sha256, size, transferred, form = %encoding.label(), "downloaded over QUIC");
                        return QuicOutcome::Done;
                    }
                    Err(QuicError::Refused(message)) => {
                        connected = true;
                        tracing::debug!(%message, form = %encoding.label(), "form not offered");
                        break;
                    }
                    Err(error @ QuicError::TooLarge { .. }) => {
                        return QuicOutcome::Failed(error.to_string());
                    }
                    Err(error @ (QuicError::Unreachable { .. } | QuicError::Setup(_)))
                        if !connected && attempt == 0 && file_len(&form_part) == 0 =>
                    {
                        return QuicOutcome::Unavailable(error.to_string());
                    }
                    Err(error) if attempt >= 4 => return QuicOutcome::Failed(error.to_string()),
                    Err(error) => {
                        connected = true;
                        let delay = backoff_delay(
                            attempt,
                            Duration::from_millis(200),
                            Duration::from_secs(10),
                            random_jitter(),
                        );
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "download interrupted; resuming");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                }
            }
        }
        QuicOutcome::Failed("the hub offered no form of the artifact".into())
    }

    /// Keeps the new version and the one it replaced (for instant rollback); removes older
    /// version folders and downloads, then unloads them.
    async fn clean_up(&self, model: &str, version: u64, previous: Option<u64>) {
        if let Ok(entries) = std::fs::read_dir(self.models_dir.join(model)) {
            for entry in entries.flatten() {
                let keep = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|v| v == version || Some(v) == previous);
                if !keep {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.downloads_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.repository.reload(Some(model)).await;
    }

    /// Publishes a signed report of what is served and how installs went.
    pub async fn report(&self, desired_sequence: u64) {
        let report = ReportedState {
            device_id: self.device_id.clone(),
            desired_sequence,
            at: self.clock.now_unix(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            serving: self.store.serving().unwrap_or_default(),
            outcomes: self
                .store
                .outcomes()
                .unwrap_or_default()
                .into_values()
                .collect::<Vec<_>>(),
        };
        let envelope = sign_envelope(
            REPORTED_PAYLOAD_TYPE,
            serde_json::to_string(&report).expect("report serializes"),
            &[&self.key],
        );
        self.mqtt
            .publish_report(serde_json::to_vec(&envelope).expect("envelope serializes"))
            .await;
    }
}

enum QuicOutcome {
    Done,
    /// The download cannot complete (e.g. larger than the manifest says).
    Failed(String),
    /// QUIC could not connect at all: use HTTP.
    Unavailable(String),
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Decodes a compressed download into the raw `part`, never writing more than `size` bytes.
fn decode(
    compressed: &Path,
    reference: Option<&Path>,
    part: &Path,
    size: u64,
) -> Result<(), String> {
    let reference = reference
        .map(std::fs::read)
        .transpose()
        .map_err(|e| format!("cannot read the patch base: {e}"))?;
    let input = std::fs::File::open(compressed).map_err(|e| e.to_string())?;
    let mut output = std::fs::File::create(part).map_err(|e| e.to_string())?;
    flotilla_common::compression::decompress_bounded(
        input,
        reference.as_deref(),
        size,
        &mut output,
    )
    .map_err(|e| e.to_string())?;
    output.sync_all().map_err(|e| e.to_string())
}

/// Moves a verified download into its version folder: written beside, fsynced, renamed, so
/// a version folder appears whole or not at all (the repository loads whatever is there).
/// The version's feature map from its signed manifest goes beside the model file, where
/// the loader looks for it; written beside and renamed, so it is whole or absent.
fn write_feature_map(model_file: &Path, features: Option<&FeatureMap>) -> std::io::Result<()> {
    let Some(features) = features else {
        return Ok(());
    };
    let path = flotilla_runtime::feature_map_path(model_file);
    let folder = path.parent().expect("model files have a folder");
    let mut file = tempfile::NamedTempFile::new_in(folder)?;
    std::io::Write::write_all(
        &mut file,
        &serde_json::to_vec(features).expect("feature maps serialize"),
    )?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

fn place_verified(
    part: &Path,
    target_dir: &Path,
    features: Option<&FeatureMap>,
) -> std::io::Result<()> {
    let model_dir = target_dir
        .parent()
        .expect("version folders have a model folder");
    std::fs::create_dir_all(model_dir)?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(model_dir)?;
    let file = staging.path().join(VERSION_FILE_NAME);
    std::fs::rename(part, &file)?;
    std::fs::File::open(&file)?.sync_all()?;
    write_feature_map(&file, features)?;
    if target_dir.exists() {
        std::fs::remove_dir_all(target_dir)?;
    }
    let staging = staging.keep();
    std::fs::rename(&staging, target_dir)?;
    std::fs::File::open(model_dir)?.sync_all()?;
    Ok(())
}
