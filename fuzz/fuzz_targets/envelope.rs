//! A signed envelope: root metadata, manifest, status, report, desired state, enrollment.
#![no_main]
use flotilla_proto::control::{DesiredState, DeviceStatus, EnrollRequest, ReportedState};
use flotilla_proto::trust::{Envelope, RootMetadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let key = flotilla_common::signing::SigningKey::from_hex(&"07".repeat(32)).unwrap();
    let root = RootMetadata {
        version: 1,
        expires: i64::MAX / 2,
        root_keys: vec![key.public_key()],
        root_threshold: 1,
        signing_keys: vec![key.public_key()],
        signing_threshold: 1,
    };
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(bytes) {
        let _ = flotilla_common::trust::verify_initial_root(&envelope, 1_800_000_000);
        let _ =
            flotilla_common::trust::verify_manifest(&root, &envelope, 1_800_000_000, None, false);
        let _ = serde_json::from_str::<DeviceStatus>(&envelope.payload);
        let _ = serde_json::from_str::<ReportedState>(&envelope.payload);
        let _ = serde_json::from_str::<DesiredState>(&envelope.payload);
    }
    let _ = serde_json::from_slice::<EnrollRequest>(bytes);
});
