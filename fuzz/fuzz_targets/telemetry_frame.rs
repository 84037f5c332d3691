//! A telemetry frame off the broker: opened, verified with a fixed key, decoded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(frame) = flotilla_common::telemetry::open_frame(bytes) {
        let key = flotilla_common::signing::SigningKey::from_hex(&"07".repeat(32)).unwrap();
        let _ = frame.verify_and_decode(&key.public_key());
        let _ = flotilla_common::telemetry::decode_compressed(frame.compressed());
    }
});
