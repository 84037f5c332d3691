//! A window batch and a drift reference, decompressed already.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = flotilla_common::telemetry::WindowBatch::decode(bytes);
    let _ = flotilla_common::telemetry::decode_reference(bytes);
});
