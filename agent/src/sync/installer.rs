//! Carrying out one install: each step's I/O in the order `install::after` gives, the
//! first failure ending it, then what `install.rs` decides to undo or to clean up. Serving
//! never stops: a failed install keeps the running version, and its outcome says which step
//! failed and why.

use flotilla_proto::control::{DesiredModel, InstallOutcome, InstallState};
use flotilla_proto::trust::ModelManifest;

use super::Syncer;
use super::download::{PatchBase, fetch_artifact};
use super::faults::{UNLOADABLE_MODEL_BYTES, damage, happens};
use super::placement::{file_sha256_if_readable, place_verified, write_feature_map};
use crate::install::{
    ArtifactSource, FailureCleanUp, InstallError, Progress, Step, after, artifact_source,
    check_download, check_manifest, clean_up_after_failure, folders_to_remove_after_install,
};

impl Syncer {
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
                    self.clean_up_after_install(&entry.name, entry.version, replaced)
                        .await;
                    tracing::info!(model = %entry.name, version = entry.version, "installed and serving");
                    return outcome;
                }
                Progress::Failed { step, error } => {
                    self.undo_failed_step(step, &error, entry, manifest.as_ref())
                        .await;
                    tracing::warn!(model = %entry.name, version = entry.version, step = step.name(), reason = %error, "install failed; still serving the previous version");
                    return self.outcome(
                        entry,
                        InstallState::Failed,
                        Some(step.name().to_owned()),
                        Some(error.to_string()),
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
    ) -> Result<(), InstallError> {
        match step {
            Step::VerifyManifest => {
                let trusted = self
                    .store
                    .trusted(&entry.name)
                    .map_err(|e| InstallError::AgentState(e.to_string()))?;
                *manifest = Some(check_manifest(
                    &self.trusted_root(),
                    entry,
                    self.clock.now_unix(),
                    trusted,
                )?);
                Ok(())
            }
            Step::Download => {
                let m = manifest.as_ref().expect("verified before download");
                self.download(m).await
            }
            Step::CheckArtifact => {
                let m = manifest
                    .as_ref()
                    .expect("verified before the artifact check");
                self.check_and_place(m)
            }
            Step::Load => {
                self.repository.add_source(&Self::model_config(
                    &self.folders.models,
                    &entry.name,
                    &self.settings,
                ));
                let report = self.repository.reload(Some(&entry.name)).await;
                if let Some(failed) = report
                    .failed
                    .iter()
                    .find(|f| f.model == entry.name && f.version == entry.version)
                {
                    return Err(InstallError::Load(failed.reason.clone()));
                }
                self.repository
                    .get(&entry.name, Some(&entry.version.to_string()))
                    .map(|_| ())
                    .map_err(|e| InstallError::Load(e.to_string()))
            }
            Step::SmokeTest => {
                let model = self
                    .repository
                    .get(&entry.name, Some(&entry.version.to_string()))
                    .map_err(|e| InstallError::SmokeTest(e.to_string()))?;
                model
                    .smoke_test()
                    .await
                    .map_err(|e| InstallError::SmokeTest(e.to_string()))
            }
            Step::Switch => self
                .repository
                .pin(&entry.name, entry.version)
                .map_err(|e| InstallError::Switch(e.to_string())),
        }
    }

    async fn download(&self, m: &ModelManifest) -> Result<(), InstallError> {
        let installed = self.folders.installed_file(&m.model, m.version);
        if artifact_source(file_sha256_if_readable(&installed).as_deref(), m)
            == ArtifactSource::AlreadyInstalled
        {
            // The signed manifest's feature map may be newer than the one beside the file.
            return write_feature_map(&installed, m.features.as_ref())
                .map_err(|e| InstallError::FeatureMap(e.to_string()));
        }
        std::fs::create_dir_all(&self.folders.downloads).map_err(|e| {
            InstallError::DownloadFolder {
                folder: self.folders.downloads.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        // Only QUIC offers patches; finding the base hashes the served file.
        let patch_base = match &self.quic {
            Some(_) => self.serving_artifact(&m.model),
            None => None,
        };
        fetch_artifact(
            &self.http,
            self.quic.as_ref(),
            &self.folders,
            patch_base,
            &m.artifact_sha256,
            m.artifact_size,
        )
        .await
        .map_err(|e| InstallError::Download(e.to_string()))?;
        if happens(self.faults.corrupt_download) {
            damage(&self.folders.download_part(&m.artifact_sha256))
                .map_err(|e| InstallError::InjectedFault(e.to_string()))?;
        }
        Ok(())
    }

    fn check_and_place(&self, m: &ModelManifest) -> Result<(), InstallError> {
        let version_folder = self.folders.version_folder(&m.model, m.version);
        let installed = self.folders.installed_file(&m.model, m.version);
        if artifact_source(file_sha256_if_readable(&installed).as_deref(), m)
            == ArtifactSource::AlreadyInstalled
        {
            return Ok(());
        }
        let part = self.folders.download_part(&m.artifact_sha256);
        let (sha256, size) = crate::transport::http::file_sha256(&part)
            .map_err(|e| InstallError::UnreadableDownload(e.to_string()))?;
        check_download(&sha256, size, m)?;
        place_verified(&part, &version_folder, m.features.as_ref())
            .map_err(|e| InstallError::Placement(e.to_string()))?;
        if happens(self.faults.unloadable_install) {
            std::fs::write(&installed, UNLOADABLE_MODEL_BYTES)
                .map_err(|e| InstallError::InjectedFault(e.to_string()))?;
        }
        Ok(())
    }

    /// The artifact this device serves for `model` now, as a patch base.
    fn serving_artifact(&self, model: &str) -> Option<PatchBase> {
        let version = *self.store.serving().ok()?.get(model)?;
        let file = self.folders.installed_file(model, version);
        let sha256 = file_sha256_if_readable(&file)?;
        Some(PatchBase { sha256, file })
    }

    async fn undo_failed_step(
        &self,
        step: Step,
        error: &InstallError,
        entry: &DesiredModel,
        manifest: Option<&ModelManifest>,
    ) {
        match clean_up_after_failure(step, error) {
            FailureCleanUp::Nothing => {}
            FailureCleanUp::DiscardDownload => {
                if let Some(m) = manifest {
                    self.folders.discard_download(&m.artifact_sha256);
                }
            }
            FailureCleanUp::RemoveVersion => {
                self.folders.remove_version(&entry.name, entry.version);
                self.repository.reload(Some(&entry.name)).await;
            }
        }
    }

    /// Keeps the new version and the one it replaced; removes the rest of the model's
    /// folder and the downloads, then unloads what was removed.
    async fn clean_up_after_install(&self, model: &str, installed: u64, replaced: Option<u64>) {
        let entries = self.folders.model_folder_entries(model);
        self.folders.remove_model_folder_entries(
            model,
            &folders_to_remove_after_install(&entries, installed, replaced),
        );
        self.folders.clear_downloads();
        self.repository.reload(Some(model)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use flotilla_common::clock::ManualClock;
    use flotilla_common::signing::{SigningKey, sign_envelope};
    use flotilla_proto::trust::{MANIFEST_PAYLOAD_TYPE, RootMetadata};

    use super::*;
    use crate::repository::ModelRepository;
    use crate::store::AgentStore;
    use crate::sync::{InjectedFaults, InstallFolders, InstalledModelSettings};
    use crate::transport::http::HubHttp;
    use crate::transport::mqtt::{AgentMqtt, StatusOrigin};

    const NOW: i64 = 1_800_000_000;

    /// Artifacts by hash, as the hub serves them over HTTP, and how many were asked for.
    #[derive(Clone, Default)]
    struct Artifacts {
        bytes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
        requests: Arc<AtomicUsize>,
    }

    async fn serve_artifact(
        State(artifacts): State<Artifacts>,
        UrlPath(sha256): UrlPath<String>,
    ) -> axum::response::Response {
        artifacts.requests.fetch_add(1, Ordering::SeqCst);
        match artifacts.bytes.lock().unwrap().get(&sha256) {
            Some(bytes) => bytes.clone().into_response(),
            None => (StatusCode::NOT_FOUND, "no artifact").into_response(),
        }
    }

    struct Device {
        syncer: Syncer,
        artifacts: Artifacts,
        hub_key: SigningKey,
        _state: tempfile::TempDir,
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap()
    }

    async fn device() -> Device {
        flotilla_runtime::init_onnx_runtime(None).unwrap();
        let artifacts = Artifacts::default();
        let router = axum::Router::new()
            .route(
                "/api/v1/artifacts/{sha}",
                axum::routing::get(serve_artifact),
            )
            .with_state(artifacts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });

        let state = tempfile::tempdir().unwrap();
        let hub_key = SigningKey::generate().unwrap();
        let device_key = Arc::new(SigningKey::generate().unwrap());
        let root = RootMetadata {
            version: 1,
            expires: NOW + 86_400,
            root_keys: vec![SigningKey::generate().unwrap().public_key()],
            root_threshold: 1,
            signing_keys: vec![hub_key.public_key()],
            signing_threshold: 1,
        };
        let (desired, _) = tokio::sync::mpsc::channel(1);
        let (acks, _) = tokio::sync::mpsc::unbounded_channel();
        // No broker: installs publish nothing, and the client keeps retrying quietly.
        let mqtt = AgentMqtt::start(
            "127.0.0.1:1",
            None,
            "dev-1",
            device_key.clone(),
            StatusOrigin {
                connected_at: NOW,
                generation: 1,
            },
            desired,
            acks,
            Duration::ZERO,
        )
        .unwrap();
        let syncer = Syncer {
            device_id: "dev-1".into(),
            key: device_key,
            root: std::sync::RwLock::new(root),
            store: Arc::new(AgentStore::open(&state.path().join("agent.db")).unwrap()),
            repository: Arc::new(ModelRepository::load(&[]).unwrap()),
            http: HubHttp::new(&format!("http://{address}"), None).unwrap(),
            quic: None,
            mqtt,
            folders: InstallFolders {
                models: state.path().join("models"),
                downloads: state.path().join("downloads"),
            },
            settings: InstalledModelSettings {
                sessions: Some(1),
                intra_op_threads: Some(1),
                queue_depth: None,
                engine: Default::default(),
            },
            faults: InjectedFaults::default(),
            clock: Arc::new(ManualClock::new(NOW)),
        };
        Device {
            syncer,
            artifacts,
            hub_key,
            _state: state,
        }
    }

    impl Device {
        /// Puts `bytes` on the hub and returns a desired entry for them, signed by the hub.
        fn publish(&self, version: u64, bytes: &[u8], rollback: bool) -> DesiredModel {
            let (sha256, size) = {
                use sha2::{Digest, Sha256};
                (hex::encode(Sha256::digest(bytes)), bytes.len() as u64)
            };
            self.artifacts
                .bytes
                .lock()
                .unwrap()
                .insert(sha256.clone(), bytes.to_vec());
            let manifest = ModelManifest {
                model: "scaler".into(),
                version,
                document_version: 1,
                artifact_sha256: sha256,
                artifact_size: size,
                inputs: vec![],
                outputs: vec![],
                created: NOW - 60,
                expires: NOW + 3600,
                annotations: Default::default(),
                features: None,
            };
            DesiredModel {
                name: "scaler".into(),
                version,
                manifest: sign_envelope(
                    MANIFEST_PAYLOAD_TYPE,
                    serde_json::to_string(&manifest).unwrap(),
                    &[&self.hub_key],
                ),
                rollback,
            }
        }

        async fn install(&self, entry: &DesiredModel) -> InstallOutcome {
            let outcome = self.syncer.install(entry).await;
            self.syncer.store.record_outcome(&outcome).unwrap();
            outcome
        }

        fn serving(&self) -> Option<u64> {
            self.syncer.store.serving().unwrap().get("scaler").copied()
        }

        fn version_folders(&self) -> Vec<String> {
            let mut names = self.syncer.folders.model_folder_entries("scaler");
            names.sort();
            names
        }

        fn default_version(&self) -> u64 {
            self.syncer.repository.get("scaler", None).unwrap().version
        }
    }

    fn failed_at(outcome: &InstallOutcome) -> (InstallState, Option<&str>) {
        (outcome.state, outcome.step.as_deref())
    }

    #[tokio::test]
    async fn installs_switch_keep_the_replaced_version_and_roll_back_without_a_download() {
        let device = device().await;
        let (v1, v2) = (fixture("scaler_v1.onnx"), fixture("scaler_v2.onnx"));

        let first = device.install(&device.publish(1, &v1, false)).await;
        assert_eq!(first.state, InstallState::Installed, "{first:?}");
        assert_eq!((device.serving(), device.default_version()), (Some(1), 1));
        let second = device.install(&device.publish(2, &v2, false)).await;
        assert_eq!(second.state, InstallState::Installed, "{second:?}");
        assert_eq!((device.serving(), device.default_version()), (Some(2), 2));
        assert_eq!(device.version_folders(), ["1", "2"]);
        // Version 3 (version 1's bytes again): version 1 goes, 2 stays for a rollback.
        let third = device.install(&device.publish(3, &v1, false)).await;
        assert_eq!(third.state, InstallState::Installed, "{third:?}");
        assert_eq!(device.version_folders(), ["2", "3"]);
        assert_eq!(
            std::fs::read_dir(&device.syncer.folders.downloads)
                .unwrap()
                .count(),
            0,
            "downloads are emptied after an install"
        );

        // Back to 2: refused unless the desired state names it as a rollback target; as
        // one, served from the kept folder without fetching a byte.
        let refused = device.install(&device.publish(2, &v2, false)).await;
        assert_eq!(
            failed_at(&refused),
            (InstallState::Failed, Some("verify_manifest"))
        );
        assert!(
            refused
                .reason
                .as_deref()
                .unwrap()
                .contains("does not name it as a rollback target"),
            "{refused:?}"
        );
        let requests = device.artifacts.requests.load(Ordering::SeqCst);
        let rollback = device.install(&device.publish(2, &v2, true)).await;
        assert_eq!(rollback.state, InstallState::Installed, "{rollback:?}");
        assert_eq!(device.artifacts.requests.load(Ordering::SeqCst), requests);
        assert_eq!((device.serving(), device.default_version()), (Some(2), 2));
        assert_eq!(device.version_folders(), ["2", "3"]);
    }

    #[tokio::test]
    async fn a_tampered_download_is_discarded_and_the_running_version_keeps_serving() {
        let device = device().await;
        let v1 = device.publish(1, &fixture("scaler_v1.onnx"), false);
        assert_eq!(device.install(&v1).await.state, InstallState::Installed);
        let v2 = device.publish(2, &fixture("scaler_v2.onnx"), false);
        for bytes in device.artifacts.bytes.lock().unwrap().values_mut() {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
        }

        let outcome = device.install(&v2).await;
        assert_eq!(
            failed_at(&outcome),
            (InstallState::Failed, Some("check_artifact"))
        );
        let reason = outcome.reason.unwrap();
        assert!(
            reason.contains("does not match its signed manifest")
                && reason.contains("tampered or corrupted"),
            "{reason}"
        );
        assert_eq!((device.serving(), device.default_version()), (Some(1), 1));
        assert_eq!(device.version_folders(), ["1"], "nothing unverified placed");
        assert_eq!(
            std::fs::read_dir(&device.syncer.folders.downloads)
                .unwrap()
                .count(),
            0,
            "the damaged download is discarded, not resumed"
        );
    }

    #[tokio::test]
    async fn a_version_that_fails_to_load_is_removed() {
        let mut device = device().await;
        let v1 = device.publish(1, &fixture("scaler_v1.onnx"), false);
        assert_eq!(device.install(&v1).await.state, InstallState::Installed);
        device.syncer.faults.unloadable_install = 1.0;
        let v2 = device.publish(2, &fixture("scaler_v2.onnx"), false);

        let outcome = device.install(&v2).await;
        assert_eq!(failed_at(&outcome), (InstallState::Failed, Some("load")));
        assert_eq!(device.version_folders(), ["1"]);
        assert_eq!((device.serving(), device.default_version()), (Some(1), 1));
        assert!(device.syncer.repository.get("scaler", Some("2")).is_err());
    }

    #[tokio::test]
    async fn an_artifact_the_hub_cannot_serve_fails_the_download_after_five_attempts() {
        let device = device().await;
        let entry = device.publish(1, &fixture("scaler_v1.onnx"), false);
        device.artifacts.bytes.lock().unwrap().clear();
        let outcome = device.install(&entry).await;
        assert_eq!(
            failed_at(&outcome),
            (InstallState::Failed, Some("download"))
        );
        assert!(
            outcome.reason.as_deref().unwrap().contains("no artifact"),
            "{outcome:?}"
        );
        assert_eq!(device.artifacts.requests.load(Ordering::SeqCst), 5);
        assert_eq!(device.serving(), None);
    }
}
