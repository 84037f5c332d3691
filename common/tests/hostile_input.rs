//! Every decoder of bytes from outside, fed random bytes and mutations of valid inputs:
//! telemetry frames and batches, drift references, compressed artifacts and patches,
//! signed envelopes (root metadata, manifests, desired states, reports, statuses),
//! artifact protocol lines, CSV and `.npy` references. Each must answer Ok or a clear
//! error: no panic, and no allocation past a bound. The bound is enforced, not hoped
//! for: this test binary runs under an allocator that refuses more than
//! `MEMORY_LIMIT` bytes live at once, which aborts the process.
//!
//! The same decoders have cargo-fuzz targets in `fuzz/` for longer runs on nightly.

use std::alloc::System;
use std::collections::BTreeMap;

use cap::Cap;
use flotilla_common::artifact_protocol::{ArtifactHeader, ArtifactRequest, split_line};
use flotilla_common::compression::{compress, compress_patch, decompress_bounded};
use flotilla_common::signing::{SigningKey, sign_envelope, verify_envelope};
use flotilla_common::sketch::{DEVICE_K, NumericProfile, Profile};
use flotilla_common::telemetry::{
    NamedProfile, WindowBatch, decode_reference, encode_reference, open_frame, seal_frame,
};
use flotilla_common::trust::{verify_initial_root, verify_manifest};
use flotilla_proto::control::{DesiredState, DeviceStatus, EnrollRequest, ReportedState};
use flotilla_proto::trust::{Envelope, RootMetadata};
use proptest::prelude::*;

/// Live heap at once, at most: far above what any valid input here needs (a few MiB), far
/// below what a length field taken at its word would ask for.
const MEMORY_LIMIT: usize = 512 << 20;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, MEMORY_LIMIT);

fn batch(device: &str) -> WindowBatch {
    let mut latency = NumericProfile::new(DEVICE_K);
    let mut feature = NumericProfile::new(DEVICE_K);
    for i in 0..200 {
        latency.update(Some(i as f32 * 0.01));
        feature.update(Some((i % 17) as f32));
    }
    WindowBatch {
        batch_id: [7; 16],
        device_id: device.into(),
        model: "iris".into(),
        version: 3,
        window_start_ms: 1_800_000_000_000,
        window_end_ms: 1_800_000_060_000,
        requests: 200,
        errors: BTreeMap::from([("shape".to_owned(), 2)]),
        latency_ms: latency,
        features: vec![NamedProfile {
            name: "sepal_length".into(),
            profile: Profile::Numeric(feature),
        }],
        predictions: vec![],
        spool_dropped_total: 0,
        spool_lost_total: 0,
        captures: vec![],
    }
}

fn npy() -> Vec<u8> {
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

struct Seeds {
    key: SigningKey,
    root: RootMetadata,
    inputs: Vec<Vec<u8>>,
}

fn seeds() -> Seeds {
    let key = SigningKey::generate().unwrap();
    let root = RootMetadata {
        version: 1,
        expires: i64::MAX / 2,
        root_keys: vec![key.public_key()],
        root_threshold: 1,
        signing_keys: vec![key.public_key()],
        signing_threshold: 1,
    };
    let signed = |payload_type: &str, payload: serde_json::Value| {
        serde_json::to_vec(&sign_envelope(payload_type, payload.to_string(), &[&key])).unwrap()
    };
    let batch = batch("dev-ab");
    let reference = encode_reference(200, &batch.features);
    let artifact: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let inputs = vec![
        seal_frame(&batch, &key),
        batch.encode(),
        reference,
        compress(&artifact).unwrap(),
        compress_patch(&artifact[..10_000], &artifact).unwrap(),
        signed(
            "application/vnd.flotilla.root+json",
            serde_json::to_value(&root).unwrap(),
        ),
        signed(
            "application/vnd.flotilla.manifest+json",
            serde_json::json!({"model": "iris", "version": 3, "document_version": 1,
                "sha256": "ab".repeat(32), "size": 20000, "expires": i64::MAX / 2,
                "inputs": [], "outputs": []}),
        ),
        signed(
            flotilla_proto::control::STATUS_PAYLOAD_TYPE,
            serde_json::json!({"device_id": "dev-ab", "online": true, "connected_at": 1,
                "epoch": 4294967296u64, "beat": 3}),
        ),
        signed(
            flotilla_proto::control::REPORTED_PAYLOAD_TYPE,
            serde_json::json!({"device_id": "dev-ab", "desired_sequence": 4, "at": 1,
                "agent_version": "0.1.0", "serving": {"iris": 3}, "outcomes": []}),
        ),
        br#"{"sha256":"abababababababababababababababababababababababababababababababab","offset":12,"encoding":{"kind":"patch","base_sha256":"cdcd"}}
rest"#
            .to_vec(),
        b"{\"size\":20000}\nbytes".to_vec(),
        b"a,b,c\n1,2,x\n\"q,\"\"x\",,3\n".to_vec(),
        npy(),
    ];
    Seeds { key, root, inputs }
}

/// Runs every decoder on `bytes`; each must return, not panic or exhaust memory.
fn decode_everything(seeds: &Seeds, bytes: &[u8]) {
    if let Ok(frame) = open_frame(bytes) {
        let _ = frame.verify_and_decode(&seeds.key.public_key());
        let _ = flotilla_common::telemetry::decode_compressed(frame.compressed());
    }
    let _ = WindowBatch::decode(bytes);
    let _ = decode_reference(bytes);
    let _ = decompress_bounded(bytes, None, 1 << 20, Vec::new());
    let _ = decompress_bounded(bytes, Some(&bytes[..bytes.len() / 2]), 1 << 20, Vec::new());
    let _ = split_line::<ArtifactRequest>(bytes);
    let _ = split_line::<ArtifactHeader>(bytes);
    let _ = flotilla_common::telemetry::parse_npy(bytes);
    let _ = flotilla_common::telemetry::parse_csv(&String::from_utf8_lossy(bytes));
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(bytes) {
        let _ = verify_initial_root(&envelope, 1_800_000_000);
        let _ = verify_manifest(&seeds.root, &envelope, 1_800_000_000, None, false);
        for payload_type in [
            flotilla_proto::control::STATUS_PAYLOAD_TYPE,
            flotilla_proto::control::REPORTED_PAYLOAD_TYPE,
        ] {
            let _ = verify_envelope(&envelope, payload_type, &[seeds.key.public_key()], 1);
        }
        let _ = serde_json::from_str::<DeviceStatus>(&envelope.payload);
        let _ = serde_json::from_str::<ReportedState>(&envelope.payload);
        let _ = serde_json::from_str::<DesiredState>(&envelope.payload);
    }
    let _ = serde_json::from_slice::<EnrollRequest>(bytes);
}

/// An edit of a valid input: flip, insert, delete or truncate at a position.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Overwrite four bytes with a large little-endian number: a length field lying.
    Huge(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Edit::Flip(at, mask)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        any::<usize>().prop_map(Edit::Huge),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match *edit {
            Edit::Flip(at, mask) if !bytes.is_empty() => bytes[at % len] ^= mask,
            Edit::Insert(at, byte) => bytes.insert(at % (bytes.len() + 1), byte),
            Edit::Delete(at) if !bytes.is_empty() => {
                bytes.remove(at % len);
            }
            Edit::Truncate(at) => bytes.truncate(at % len),
            Edit::Huge(at) if bytes.len() >= 4 => {
                let at = at % (bytes.len() - 3);
                bytes[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
            }
            _ => {}
        }
    }
    bytes
}

fn seeds_once() -> &'static Seeds {
    static SEEDS: std::sync::OnceLock<Seeds> = std::sync::OnceLock::new();
    SEEDS.get_or_init(seeds)
}

proptest! {
    // About 10 s here in a debug build; the counts are in the issue notes.
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_valid_inputs_are_decoded_or_refused(
        seed in 0usize..13,
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let seeds = seeds_once();
        let bytes = apply(seeds.inputs[seed % seeds.inputs.len()].clone(), &edits);
        decode_everything(seeds, &bytes);
    }

    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        decode_everything(seeds_once(), &bytes);
    }
}

#[test]
fn the_valid_seeds_decode() {
    let seeds = seeds_once();
    let frame = open_frame(&seeds.inputs[0]).unwrap();
    let expected = batch("dev-ab").encode();
    assert_eq!(
        frame
            .verify_and_decode(&seeds.key.public_key())
            .unwrap()
            .encode(),
        expected
    );
    assert_eq!(
        WindowBatch::decode(&seeds.inputs[1]).unwrap().encode(),
        expected
    );
    assert_eq!(decode_reference(&seeds.inputs[2]).unwrap().0, 200);
    let envelope: Envelope = serde_json::from_slice(&seeds.inputs[5]).unwrap();
    verify_initial_root(&envelope, 1_800_000_000).unwrap();
    assert!(
        split_line::<ArtifactRequest>(&seeds.inputs[9])
            .unwrap()
            .is_some()
    );
    assert_eq!(
        flotilla_common::telemetry::parse_npy(&seeds.inputs[12])
            .unwrap()
            .rows,
        2
    );
    assert_eq!(
        flotilla_common::telemetry::parse_csv(std::str::from_utf8(&seeds.inputs[11]).unwrap())
            .unwrap()
            .rows,
        2
    );
}
