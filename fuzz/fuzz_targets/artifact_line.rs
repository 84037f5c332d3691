//! The artifact protocol's request and answer lines.
#![no_main]
use flotilla_common::artifact_protocol::{ArtifactHeader, ArtifactRequest, split_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = split_line::<ArtifactRequest>(bytes);
    let _ = split_line::<ArtifactHeader>(bytes);
});
