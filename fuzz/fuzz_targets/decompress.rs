//! A compressed artifact, and a patch against half of itself, bounded to 1 MiB out.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    use flotilla_common::compression::decompress_bounded;
    let _ = decompress_bounded(bytes, None, 1 << 20, Vec::new());
    let _ = decompress_bounded(bytes, Some(&bytes[..bytes.len() / 2]), 1 << 20, Vec::new());
});
