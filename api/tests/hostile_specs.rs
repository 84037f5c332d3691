//! Rollout specs and trigger rules, as operators send them (JSON to the API, TOML files to
//! the CLI), fed random text and mutations of valid ones: each parses or is refused with
//! a reason, never a panic; what parses also passes its own checks.

use flotilla_api::rollouts::spec::RolloutSpec;
use flotilla_api::triggers::rule::TriggerRule;
use proptest::prelude::*;

const SPEC_TOML: &str = r#"model = "iris"
version = "2"
waves = [5, 25, 100]
soak_seconds = 120
approve_before = [2]
on_failure = "rollback"
promote_alias = "production"
[gates]
latency_p99_ratio_max = 1.5
error_rate_increase_max = 0.02
"#;

const RULE_TOML: &str = r#"window_seconds = 60
cooldown_seconds = 600
[drift]
consecutive_windows = 2
device_percent = 50
[error_rate]
above = 0.05
[action.webhook]
url = "https://127.0.0.1:9000/retrain"
secret = "0123456789abcdef"
"#;

fn seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(made_seeds)
}

fn made_seeds() -> Vec<String> {
    let spec = RolloutSpec::from_toml(SPEC_TOML).unwrap();
    let rule = TriggerRule::from_toml(RULE_TOML).unwrap();
    vec![
        SPEC_TOML.to_owned(),
        serde_json::to_string(&spec).unwrap(),
        RULE_TOML.to_owned(),
        serde_json::to_string(&rule).unwrap(),
    ]
}

fn parse_everything(text: &str) {
    let specs = [RolloutSpec::from_json(text), RolloutSpec::from_toml(text)];
    for spec in specs.into_iter().flatten() {
        spec.check().expect("a parsed spec passes its checks");
        let _ = spec.for_version("other", 7);
    }
    let rules = [TriggerRule::from_json(text), TriggerRule::from_toml(text)];
    for rule in rules.into_iter().flatten() {
        rule.check().expect("a parsed rule passes its checks");
        let _ = rule.settle_ms();
        let _ = rule.redacted();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_specs_and_rules_parse_or_are_refused(
        seed in 0usize..4,
        edits in prop::collection::vec((any::<usize>(), any::<char>(), 0u8..3), 1..5),
    ) {
        let mut text: Vec<char> = seeds()[seed].chars().collect();
        for (at, c, op) in edits {
            let at = at % text.len().max(1);
            match op {
                0 if !text.is_empty() => text[at] = c,
                1 => text.insert(at, c),
                _ => text.truncate(at),
            }
        }
        parse_everything(&text.into_iter().collect::<String>());
    }

    #[test]
    fn random_text_is_refused(text in ".{0,400}") {
        parse_everything(&text);
    }
}
