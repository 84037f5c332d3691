//! Rollout specs and trigger rules, as JSON (API) and TOML (CLI files).
#![no_main]
use flotilla_api::rollouts::spec::RolloutSpec;
use flotilla_api::triggers::rule::TriggerRule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let _ = RolloutSpec::from_json(&text);
    let _ = RolloutSpec::from_toml(&text);
    let _ = TriggerRule::from_json(&text);
    let _ = TriggerRule::from_toml(&text);
});
