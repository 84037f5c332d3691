//! A hub's services in this test, on tokio's paused time: the real registry, store, fleet,
//! telemetry ingest, rollout controller and triggers over a temp folder, reading the time
//! from a `TokioClock`, so minutes of soak or hours of cooldown pass in milliseconds. The
//! devices are simulated at the hub's edge: they report installs and send signed telemetry
//! windows through the hub's real ingest (their MQTT and HTTP are left out; the end-to-end
//! tests cover those).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::clock::{SharedClock, TokioClock};
use flotilla_common::signing::SigningKey;
use flotilla_common::sketch::{CategoricalProfile, DEVICE_K, NumericProfile, Profile};
use flotilla_common::telemetry::Column;
use flotilla_common::telemetry::{NamedProfile, WindowBatch, read_table, seal_frame};
use flotilla_hub::data_dir::DataDir;
use flotilla_hub::fleet::Fleet;
use flotilla_hub::metrics::HubMetrics;
use flotilla_hub::registry::{PushMetadata, Registry};
use flotilla_hub::rollout::Rollouts;
use flotilla_hub::store::{DeviceRecord, RegistryStore, TelemetryStore};
use flotilla_hub::telemetry::{Telemetry, TelemetryIngest};
use flotilla_hub::triggers::Triggers;
use flotilla_proto::control::{InstallOutcome, InstallState};
use sha2::{Digest, Sha256};

use crate::support::fixture;

/// A simulated device: its id and key.
pub struct Device {
    pub id: String,
    key: SigningKey,
    windows_sent: u64,
}

pub struct SimulatedHub {
    pub clock: SharedClock,
    pub registry: Arc<Registry>,
    pub fleet: Arc<Fleet>,
    pub telemetry: Arc<Telemetry>,
    pub ingest: TelemetryIngest,
    pub rollouts: Arc<Rollouts>,
    pub triggers: Arc<Triggers>,
    pub devices: Vec<Device>,
    /// Rows of the iris training data: what undrifted devices see.
    rows: Vec<[f32; 4]>,
    feature_names: Vec<String>,
    _dir: tempfile::TempDir,
}

/// 2027-01-15, a Friday: far from any window boundary surprise.
const START_UNIX: i64 = 1_800_000_000;

impl SimulatedHub {
    /// A hub with `devices` enrolled devices labelled `n=I`, and the iris model pushed as
    /// versions 1 (`iris_classifier.onnx`) and 2 (`iris_classifier_v2.onnx`), with the
    /// training data as both versions' reference; every device is told and serves version 1.
    pub async fn start(devices: usize) -> SimulatedHub {
        flotilla_runtime::init_onnx_runtime(None).expect("ONNX Runtime (deploy/setup.sh)");
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(TokioClock::starting_at(START_UNIX));
        let data_dir = DataDir::new(dir.path());
        data_dir.init(clock.now_unix()).unwrap();
        let store: Arc<dyn RegistryStore> = Arc::new(data_dir.open_store().unwrap());
        let registry = Arc::new(Registry::new(
            data_dir.clone(),
            store.clone(),
            flotilla_hub::registry::Signer::load(&data_dir, store.as_ref()).unwrap(),
            clock.clone(),
        ));
        let fleet = Arc::new(Fleet::new(
            registry.clone(),
            "127.0.0.1:1".into(),
            "http://127.0.0.1:1".into(),
        ));
        let telemetry_store =
            Arc::new(TelemetryStore::open(&dir.path().join("telemetry.db")).unwrap());
        let telemetry = Arc::new(Telemetry::new(telemetry_store.clone(), store.clone()));
        let ingest = TelemetryIngest::new(
            telemetry_store,
            store.clone(),
            Arc::new(HubMetrics::default()),
            clock.clone(),
        );
        let rollouts = Arc::new(Rollouts::new(
            registry.clone(),
            fleet.clone(),
            telemetry.clone(),
            None,
        ));
        let triggers = Arc::new(Triggers::new(
            registry.clone(),
            telemetry.clone(),
            "http://127.0.0.1:1".into(),
            dir.path().join("triggers"),
            true,
            None,
        ));
        let (names, reference) =
            flotilla_common::telemetry::reference_from_file(&fixture("iris_reference.csv"), &[])
                .unwrap();
        let table = read_table(&fixture("iris_reference.csv")).unwrap();
        let columns: Vec<&Vec<Option<f32>>> = table
            .columns
            .iter()
            .map(|c| match c {
                Column::Numeric(values) => values,
                Column::Text(_) => panic!("the iris reference is numeric"),
            })
            .collect();
        let rows = (0..table.rows)
            .map(|r| std::array::from_fn(|f| columns[f][r].unwrap_or(0.0)))
            .collect();
        let mut hub = SimulatedHub {
            clock,
            registry,
            fleet,
            telemetry,
            ingest,
            rollouts,
            triggers,
            devices: Vec::new(),
            rows,
            feature_names: names.clone(),
            _dir: dir,
        };
        for (version, file) in [(1, "iris_classifier.onnx"), (2, "iris_classifier_v2.onnx")] {
            let pushed = hub.push(file, names.clone());
            assert_eq!(pushed, version);
            hub.telemetry
                .set_reference("iris", version, &reference, hub.clock.now_unix())
                .unwrap();
        }
        for n in 0..devices {
            hub.enroll(n);
        }
        let everyone = flotilla_api::LabelSelector::all();
        hub.fleet.deploy("iris", "1", &everyone, "test").unwrap();
        for d in 0..devices {
            hub.report_serving(d, 1);
        }
        hub
    }

    fn push(&self, file: &str, feature_names: Vec<String>) -> u64 {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let mut upload = tempfile::NamedTempFile::new_in(self._dir.path()).unwrap();
        upload.write_all(&bytes).unwrap();
        let sha = hex::encode(Sha256::digest(&bytes));
        let metadata = PushMetadata {
            feature_names: Some(feature_names),
            ..PushMetadata::default()
        };
        self.registry
            .push("iris", upload, &sha, bytes.len() as u64, metadata, "test")
            .unwrap()
            .version
    }

    fn enroll(&mut self, n: usize) {
        let key = SigningKey::generate().unwrap();
        let id = format!("dev-{n:04}");
        self.registry
            .store()
            .upsert_device(&DeviceRecord {
                id: id.clone(),
                public_key: key.public_key(),
                labels: BTreeMap::from([("n".to_owned(), n.to_string())]),
                hardware: BTreeMap::new(),
                agent_version: "simulated".into(),
                enrolled_at: self.clock.now_unix(),
                last_seen: Some(self.clock.now_unix()),
                online: true,
                serving: BTreeMap::new(),
                last_outcomes: Vec::new(),
                reported_sequence: 0,
                revoked_at: None,
            })
            .unwrap();
        self.devices.push(Device {
            id,
            key,
            windows_sent: 0,
        });
    }

    /// The device reports serving `version` (an install went through), answering its
    /// current desired state.
    pub fn report_serving(&self, device: usize, version: u64) {
        let id = &self.devices[device].id;
        let store = self.registry.store();
        let sequence = store.desired(id).unwrap().map_or(0, |d| d.sequence);
        let outcome = InstallOutcome {
            model: "iris".into(),
            version,
            state: InstallState::Installed,
            step: None,
            reason: None,
            at: self.clock.now_unix(),
        };
        store
            .record_report(
                id,
                sequence,
                &BTreeMap::from([("iris".to_owned(), version)]),
                &[outcome],
                self.clock.now_unix(),
            )
            .unwrap();
    }

    /// The version the hub wants the device to run.
    pub fn desired(&self, device: usize) -> Option<u64> {
        self.fleet
            .desired_version(&self.devices[device].id, "iris")
            .unwrap()
    }

    /// The version the device reports serving.
    pub fn serving(&self, device: usize) -> Option<u64> {
        self.registry
            .store()
            .device(&self.devices[device].id)
            .unwrap()
            .and_then(|d| d.serving.get("iris").copied())
    }

    /// Every device does what its desired state says at once (an instant install).
    pub fn devices_follow(&self) {
        for d in 0..self.devices.len() {
            if let Some(wanted) = self.desired(d)
                && self.serving(d) != Some(wanted)
            {
                self.report_serving(d, wanted);
            }
        }
    }

    /// The hub's clock, in Unix seconds.
    pub fn clock_seconds(&self) -> i64 {
        self.clock.now_unix()
    }

    /// Each device sends one signed window of the version it serves, covering the last
    /// `span`, of `requests` requests of three rows each drawn from the training data: here
    /// with each device's (requests, errors) from `traffic`.
    pub fn send_windows_with(
        &mut self,
        span: Duration,
        traffic: impl Fn(usize) -> (u64, u64),
    ) -> u64 {
        self.send(span, &|_| 0.0, &traffic)
    }

    /// `send_windows_with` without errors, each device's petal features (the third and
    /// fourth columns) moved by `shift(device)`.
    pub fn send_windows_shifted(
        &mut self,
        span: Duration,
        requests: u64,
        shift: impl Fn(usize) -> f32,
    ) -> u64 {
        self.send(span, &shift, &|_| (requests, 0))
    }

    /// Every request takes about a millisecond.
    fn send(
        &mut self,
        span: Duration,
        shift: &dyn Fn(usize) -> f32,
        traffic: &dyn Fn(usize) -> (u64, u64),
    ) -> u64 {
        let now_ms = self.clock.now_ms();
        let mut frames = Vec::new();
        for d in 0..self.devices.len() {
            let Some(version) = self.serving(d) else {
                continue;
            };
            let (requests, errors) = traffic(d);
            let shift = shift(d);
            let device = &mut self.devices[d];
            device.windows_sent += 1;
            let mut features: Vec<NumericProfile> =
                (0..4).map(|_| NumericProfile::new(DEVICE_K)).collect();
            let rows = requests as usize * 3;
            for r in 0..rows {
                let row =
                    self.rows[(r * 7 + d * 13 + device.windows_sent as usize) % self.rows.len()];
                for (f, profile) in features.iter_mut().enumerate() {
                    // Petal length and width (the third and fourth columns) drift.
                    let moved = if f >= 2 { shift } else { 0.0 };
                    profile.update(Some(row[f] + moved));
                }
            }
            // The predicted classes, in the proportions of the training data.
            let mut labels = CategoricalProfile::new();
            (0..rows).for_each(|r| labels.update(Some(["0", "1", "2"][r % 3])));
            let mut latency = NumericProfile::new(DEVICE_K);
            (0..requests).for_each(|i| latency.update(Some(1.0 + (i % 5) as f32 * 0.01)));
            let mut batch_id = [0u8; 16];
            batch_id[..8].copy_from_slice(&(d as u64).to_le_bytes());
            batch_id[8..].copy_from_slice(&device.windows_sent.to_le_bytes());
            let batch = WindowBatch {
                batch_id,
                device_id: device.id.clone(),
                model: "iris".into(),
                version,
                window_start_ms: now_ms - span.as_millis() as i64,
                window_end_ms: now_ms,
                requests,
                errors: if errors > 0 {
                    BTreeMap::from([("inference_failed".to_owned(), errors)])
                } else {
                    BTreeMap::new()
                },
                latency_ms: latency,
                features: self
                    .feature_names
                    .iter()
                    .zip(features)
                    .map(|(name, profile)| NamedProfile {
                        name: name.clone(),
                        profile: Profile::Numeric(profile),
                    })
                    .collect(),
                predictions: vec![NamedProfile {
                    name: "label".into(),
                    profile: Profile::Categorical(labels),
                }],
                spool_dropped_total: 0,
                spool_lost_total: 0,
                captures: vec![],
            };
            frames.push((
                flotilla_proto::telemetry::topics::telemetry(&device.id),
                bytes::Bytes::from(seal_frame(&batch, &device.key)),
            ));
        }
        let outcome = self.ingest.ingest(&frames, now_ms);
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        outcome.stored
    }
}
