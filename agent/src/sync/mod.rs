//! Following the hub: accept a signed desired state (`desired.rs`), install what it names
//! step by step (`installer.rs`, deciding with `install.rs`), fetch artifacts
//! (`download.rs`), put files in place (`placement.rs`), and report. Serving never stops: a
//! failed install keeps the running version, and the report says which step failed and why.

mod desired;
mod download;
mod faults;
mod installer;
mod placement;

use std::path::Path;
use std::sync::Arc;

use flotilla_common::clock::SharedClock;
use flotilla_common::signing::{SigningKey, sign_envelope};
use flotilla_proto::control::{DesiredState, REPORTED_PAYLOAD_TYPE, ReportedState};
use flotilla_proto::trust::RootMetadata;
use tokio::sync::mpsc;

pub use desired::{DesiredStateError, check_desired_state};
pub use download::DownloadError;
pub use faults::InjectedFaults;
pub use placement::InstallFolders;

use crate::config::ModelConfig;
use crate::install::installs_needed;
use crate::repository::ModelRepository;
use crate::store::AgentStore;
use crate::transport::http::HubHttp;
use crate::transport::mqtt::AgentMqtt;

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
    pub folders: InstallFolders,
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

    /// Follows every desired state that arrives, one at a time, until the channel closes.
    pub async fn run(self, mut desired: mpsc::Receiver<Vec<u8>>) {
        while let Some(payload) = desired.recv().await {
            match self.accept_desired_refreshing_root(&payload).await {
                Ok(Some(state)) => self.follow(&state).await,
                Ok(None) => {
                    tracing::info!("ignoring a desired state older than the one already followed")
                }
                Err(reason) => tracing::warn!(%reason, "desired state refused"),
            }
        }
    }

    /// Installs what `state` names and this device does not serve, reporting after each
    /// install and once at the end.
    async fn follow(&self, state: &DesiredState) {
        for entry in installs_needed(&state.models, &self.store.serving().unwrap_or_default()) {
            let outcome = self.install(entry).await;
            if let Err(error) = self.store.record_outcome(&outcome) {
                tracing::error!(%error, "cannot record the install outcome");
            }
            self.report(state.sequence).await;
        }
        self.report(state.sequence).await;
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
