//! A reference dataset given at push: CSV text or a NumPy .npy file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = flotilla_common::telemetry::parse_npy(bytes);
    let _ = flotilla_common::telemetry::parse_csv(&String::from_utf8_lossy(bytes));
});
