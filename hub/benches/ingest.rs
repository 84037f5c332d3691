//! Hub telemetry ingest and fleet reports (docs/BENCHMARKS.md): how many telemetry frames per
//! second the hub verifies (ed25519), decompresses, decodes, checks against the model
//! version, deduplicates and stores in SQLite, with 10 features per batch; then the memory
//! and time a report takes that merges 10,000 devices' windows.
//!
//! The ingest path is driven as a library (the same `TelemetryIngest` the MQTT thread calls),
//! so the figure is the hub's own cost, not the broker's.
//!
//! `cargo bench -p flotilla-hub --bench ingest -- [--devices N] [--windows W] [--rounds R]`

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flotilla_common::clock::SystemClock;
use flotilla_common::signing::SigningKey;
use flotilla_common::sketch::{DEVICE_K, NumericProfile, Profile, REFERENCE_K};
use flotilla_common::telemetry::{NamedProfile, WindowBatch, encode_reference, seal_frame};
use flotilla_hub::data_dir::DataDir;
use flotilla_hub::metrics::HubMetrics;
use flotilla_hub::registry::{PushMetadata, Registry};
use flotilla_hub::store::{DeviceRecord, RegistryStore, TelemetryStore};
use flotilla_hub::telemetry::{Against, SliceQuery, Telemetry, TelemetryIngest};
use sha2::{Digest, Sha256};

fn arg(flag: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// Resets the peak-RSS counter (Linux: writing 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

const FEATURES: usize = 10;

/// A window as a device with a few hundred requests a minute would send it.
fn window(device: &str, index: usize, rows: usize, seed: u64) -> WindowBatch {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (0..4)
            .map(|k| ((state >> (k * 16)) & 0xffff) as f32 / 65536.0)
            .sum::<f32>()
    };
    let features = (0..FEATURES)
        .map(|f| {
            let mut p = NumericProfile::new(DEVICE_K);
            (0..rows).for_each(|_| p.update(Some(next() + f as f32)));
            NamedProfile {
                name: format!("f{f}"),
                profile: Profile::Numeric(p),
            }
        })
        .collect();
    let mut latency = NumericProfile::new(DEVICE_K);
    (0..rows).for_each(|_| latency.update(Some(next())));
    let mut batch_id = [0u8; 16];
    batch_id[..8].copy_from_slice(&seed.to_le_bytes());
    batch_id[8..].copy_from_slice(&(index as u64).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    WindowBatch {
        batch_id,
        device_id: device.into(),
        model: "linear10".into(),
        version: 1,
        window_start_ms: now - 60_000 * (index as i64 + 1),
        window_end_ms: now - 60_000 * index as i64,
        requests: rows as u64,
        errors: BTreeMap::new(),
        latency_ms: latency,
        features,
        predictions: vec![],
        spool_dropped_total: 0,
        spool_lost_total: 0,
        captures: vec![],
    }
}

fn main() {
    let devices = arg("--devices", 10_000);
    let windows = arg("--windows", 1);
    let rounds = arg("--rounds", 3);
    println!("machine: {}", flotilla_testkit::measure::machine());
    flotilla_runtime::init_onnx_runtime(None).expect("ONNX Runtime (deploy/fetch-onnxruntime.sh)");
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    data.init(0).unwrap();
    let store: Arc<dyn RegistryStore> = Arc::new(data.open_store().unwrap());
    let registry = Registry::new(
        data.clone(),
        store.clone(),
        flotilla_hub::registry::Signer::load(&data, store.as_ref()).unwrap(),
        SystemClock::shared(),
    );
    let model =
        std::fs::read(flotilla_testkit::repo_root().join("agent/tests/fixtures/linear10.onnx"))
            .unwrap();
    let mut upload = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    upload.write_all(&model).unwrap();
    let sha = hex::encode(Sha256::digest(&model));
    registry
        .push(
            "linear10",
            upload,
            &sha,
            model.len() as u64,
            PushMetadata::default(),
            "bench",
        )
        .unwrap();

    // Devices and their sealed frames (made before timing: signing is the device's cost).
    let started = Instant::now();
    let mut frames = Vec::with_capacity(devices * windows);
    for d in 0..devices {
        let key = SigningKey::generate().unwrap();
        let id = format!("dev-{d:012}");
        store
            .upsert_device(&DeviceRecord {
                id: id.clone(),
                public_key: key.public_key(),
                labels: BTreeMap::from([("cohort".to_owned(), (d % 2).to_string())]),
                hardware: BTreeMap::new(),
                agent_version: "bench".into(),
                enrolled_at: 0,
                last_seen: None,
                online: true,
                serving: BTreeMap::new(),
                last_outcomes: Vec::new(),
                reported_sequence: 0,
                revoked_at: None,
            })
            .unwrap();
        for w in 0..windows {
            let topic = flotilla_proto::telemetry::topics::telemetry(&id);
            frames.push((
                topic,
                Bytes::from(seal_frame(&window(&id, w, 300, d as u64 * 7919 + 1), &key)),
            ));
        }
    }
    let frame_bytes: usize = frames.iter().map(|(_, f)| f.len()).sum();
    println!(
        "{} frames from {devices} devices ({FEATURES} features, 300 rows a window), {:.0} bytes each on average, prepared in {:.1} s",
        frames.len(),
        frame_bytes as f64 / frames.len() as f64,
        started.elapsed().as_secs_f64()
    );

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut fresh_rates = Vec::new();
    let mut duplicate_rates = Vec::new();
    let mut kept = None;
    for round in 0..rounds {
        let telemetry_store = Arc::new(
            TelemetryStore::open(&dir.path().join(format!("telemetry-{round}.db"))).unwrap(),
        );
        let ingest = TelemetryIngest::new(
            telemetry_store.clone(),
            store.clone(),
            Arc::new(HubMetrics::default()),
            SystemClock::shared(),
        );
        let started = Instant::now();
        let mut stored = 0;
        for chunk in frames.chunks(512) {
            let outcome = ingest.ingest(chunk, now_ms);
            assert!(
                outcome.rejected.is_empty(),
                "{:?}",
                outcome.rejected.first()
            );
            stored += outcome.stored;
        }
        fresh_rates.push(frames.len() as f64 / started.elapsed().as_secs_f64());
        assert_eq!(stored as usize, frames.len());
        let started = Instant::now();
        for chunk in frames.chunks(512) {
            assert_eq!(
                ingest.ingest(chunk, now_ms).duplicates as usize,
                chunk.len()
            );
        }
        duplicate_rates.push(frames.len() as f64 / started.elapsed().as_secs_f64());
        kept = Some(telemetry_store);
    }
    println!(
        "ingest: {:.0} new batches/s (median of {rounds}: {:?}); delivered again: {:.0} batches/s counted as duplicates",
        median(fresh_rates.clone()),
        fresh_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        median(duplicate_rates)
    );

    // One report over every device's windows, against a reference.
    let telemetry = Telemetry::new(kept.unwrap(), store.clone());
    let reference: Vec<NamedProfile> = (0..FEATURES)
        .map(|f| {
            let mut p = NumericProfile::new(REFERENCE_K);
            (0..100_000).for_each(|i| p.update(Some((i % 1000) as f32 / 250.0 + f as f32)));
            NamedProfile {
                name: format!("f{f}"),
                profile: Profile::Numeric(p),
            }
        })
        .collect();
    telemetry
        .set_reference("linear10", 1, &encode_reference(100_000, &reference), 0)
        .unwrap();
    let before = status_kib("VmRSS:");
    reset_peak();
    let started = Instant::now();
    let report = telemetry
        .drift_report(
            &SliceQuery {
                model: "linear10".into(),
                version: Some(1),
                ..SliceQuery::default()
            },
            &Against::Reference,
        )
        .unwrap();
    let elapsed = started.elapsed();
    let peak = status_kib("VmHWM:");
    println!(
        "report over {} windows from {} devices: {:.2} s, RSS {:.1} MiB before, peak {:.1} MiB during (+{:.1} MiB)",
        report.windows,
        report.devices,
        elapsed.as_secs_f64(),
        before / 1024.0,
        peak / 1024.0,
        (peak - before) / 1024.0
    );
    let started = Instant::now();
    let half = telemetry
        .slice(&SliceQuery {
            model: "linear10".into(),
            version: Some(1),
            selector: flotilla_api::LabelSelector::parse("cohort=1").unwrap(),
            ..SliceQuery::default()
        })
        .unwrap();
    println!(
        "slice by label selector (half the fleet): {} devices in {:.2} s",
        half.devices.len(),
        started.elapsed().as_secs_f64()
    );
}
