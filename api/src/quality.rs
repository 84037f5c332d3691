//! The promotion quality gate: a per-model policy of rules comparing a pushed candidate's
//! evaluation metrics (`flotilla model push --metric k=v`) with the production version's,
//! e.g. `auc >= production.auc + 0.005` or `latency_ms <= production.latency_ms * 1.1`.
//! Parsing and evaluation are pure; the push handler stores the verdict, rejects (retires)
//! a failing candidate and may start a canary rollout of a passing one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `PUT /api/v1/models/{model}/quality-gate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QualityPolicy {
    /// Each `METRIC OP VALUE` where OP is one of `>= <= > < ==` and VALUE a number or
    /// `production.METRIC`, optionally `+ N`, `- N` or `* N`. Parsed when the policy is read,
    /// so a policy with a bad rule never gets in.
    #[schema(value_type = Vec<String>, example = json!(["auc >= production.auc + 0.005"]))]
    pub rules: Vec<Rule>,
    /// The alias candidates are compared with.
    #[serde(default = "default_baseline")]
    pub baseline_alias: String,
    /// A rollout spec (without model and version) started for a candidate that passes.
    #[serde(default)]
    pub auto_rollout: Option<crate::rollouts::RolloutSpec>,
}

fn default_baseline() -> String {
    "production".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Op {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "==")]
    Eq,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Adjust {
    None,
    Add(f64),
    Mul(f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    Baseline { metric: String, adjust: Adjust },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    text: String,
    metric: String,
    op: Op,
    value: Value,
}

fn number(text: &str, rule: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("rule {rule:?}: {text:?} is not a number"))
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, String> {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let bad = || {
            format!("rule {text:?} is not METRIC OP VALUE (e.g. \"auc >= production.auc + 0.005\")")
        };
        if tokens.len() != 3 && tokens.len() != 5 {
            return Err(bad());
        }
        let op = match tokens[1] {
            ">=" => Op::Ge,
            "<=" => Op::Le,
            ">" => Op::Gt,
            "<" => Op::Lt,
            "==" => Op::Eq,
            other => {
                return Err(format!(
                    "rule {text:?}: {other:?} is not one of >= <= > < =="
                ));
            }
        };
        let value = match tokens[2].strip_prefix("production.") {
            Some(metric) if !metric.is_empty() => {
                let adjust = match tokens.get(3..5) {
                    None => Adjust::None,
                    Some(["+", n]) => Adjust::Add(number(n, text)?),
                    Some(["-", n]) => Adjust::Add(-number(n, text)?),
                    Some(["*", n]) => Adjust::Mul(number(n, text)?),
                    Some(_) => return Err(bad()),
                };
                Value::Baseline {
                    metric: metric.to_owned(),
                    adjust,
                }
            }
            _ if tokens.len() == 3 => Value::Number(number(tokens[2], text)?),
            _ => return Err(bad()),
        };
        Ok(Rule {
            text: text.to_owned(),
            metric: tokens[0].to_owned(),
            op,
            value,
        })
    }
}

/// One rule's outcome, with the figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleOutcome {
    pub rule: String,
    pub candidate: Option<f64>,
    /// What the candidate was held against (the baseline's value adjusted, or the number).
    pub threshold: Option<f64>,
    pub passed: bool,
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualityVerdict {
    pub passed: bool,
    pub baseline_version: Option<u64>,
    pub outcomes: Vec<RuleOutcome>,
}

impl QualityPolicy {
    /// What parsing cannot say: a gate needs at least one rule.
    pub fn check(&self) -> Result<(), String> {
        if self.rules.is_empty() {
            return Err("a quality gate needs at least one rule".into());
        }
        Ok(())
    }
}

/// A rule travels as its text, and is parsed (and refused with its reason) on the way in.
impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rule, D::Error> {
        let text = String::deserialize(deserializer)?;
        Rule::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Rule {
    /// The rule as written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Evaluates the rules. A missing candidate metric fails its rule; with no baseline version
/// (nothing in production yet) rules against it pass, noted.
pub fn evaluate(
    rules: &[Rule],
    candidate: &BTreeMap<String, f64>,
    baseline: Option<(u64, &BTreeMap<String, f64>)>,
) -> QualityVerdict {
    let outcomes: Vec<RuleOutcome> = rules
        .iter()
        .map(|rule| {
            let mut outcome = RuleOutcome {
                rule: rule.text.clone(),
                candidate: candidate.get(&rule.metric).copied(),
                threshold: None,
                passed: false,
                note: None,
            };
            let threshold = match &rule.value {
                Value::Number(n) => Some(*n),
                Value::Baseline { metric, adjust } => match baseline {
                    None => {
                        outcome.passed = true;
                        outcome.note = Some("no baseline version to compare with".into());
                        return outcome;
                    }
                    Some((version, metrics)) => match metrics.get(metric) {
                        None => {
                            outcome.note = Some(format!(
                                "baseline version {version} has no metric {metric:?}"
                            ));
                            return outcome;
                        }
                        Some(v) => Some(match adjust {
                            Adjust::None => *v,
                            Adjust::Add(n) => v + n,
                            Adjust::Mul(n) => v * n,
                        }),
                    },
                },
            };
            outcome.threshold = threshold;
            match (outcome.candidate, threshold) {
                (None, _) => {
                    outcome.note = Some(format!(
                        "the candidate has no metric {:?} (push it with --metric {}=VALUE)",
                        rule.metric, rule.metric
                    ))
                }
                (Some(c), Some(t)) => {
                    outcome.passed = match rule.op {
                        Op::Ge => c >= t,
                        Op::Le => c <= t,
                        Op::Gt => c > t,
                        Op::Lt => c < t,
                        Op::Eq => (c - t).abs() <= f64::EPSILON * t.abs().max(1.0),
                    }
                }
                (Some(_), None) => {}
            }
            outcome
        })
        .collect();
    QualityVerdict {
        passed: outcomes.iter().all(|o| o.passed),
        baseline_version: baseline.map(|(v, _)| v),
        outcomes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn rules(texts: &[&str]) -> Vec<Rule> {
        texts.iter().map(|t| Rule::parse(t).unwrap()).collect()
    }

    #[test]
    fn candidates_are_compared_with_production() {
        let r = rules(&[
            "auc >= production.auc + 0.005",
            "latency_ms <= production.latency_ms * 1.1",
            "accuracy > 0.9",
        ]);
        let production = metrics(&[("auc", 0.90), ("latency_ms", 2.0)]);
        let good = evaluate(
            &r,
            &metrics(&[("auc", 0.91), ("latency_ms", 2.1), ("accuracy", 0.95)]),
            Some((3, &production)),
        );
        assert!(good.passed, "{good:?}");
        assert_eq!(good.outcomes[0].threshold, Some(0.905));
        let bad = evaluate(
            &r,
            &metrics(&[("auc", 0.903), ("latency_ms", 2.5), ("accuracy", 0.95)]),
            Some((3, &production)),
        );
        assert!(!bad.passed);
        assert_eq!(
            bad.outcomes.iter().map(|o| o.passed).collect::<Vec<_>>(),
            [false, false, true]
        );
    }

    #[test]
    fn missing_metrics_fail_and_a_first_version_has_no_baseline() {
        let r = rules(&["auc >= production.auc"]);
        let missing = evaluate(&r, &metrics(&[]), Some((1, &metrics(&[("auc", 0.9)]))));
        assert!(!missing.passed);
        assert!(
            missing.outcomes[0]
                .note
                .as_ref()
                .unwrap()
                .contains("--metric auc=")
        );
        let first = evaluate(&r, &metrics(&[("auc", 0.5)]), None);
        assert!(first.passed);
        let baseline_lacks = evaluate(&r, &metrics(&[("auc", 0.9)]), Some((1, &metrics(&[]))));
        assert!(!baseline_lacks.passed);
    }

    #[test]
    fn policies_travel_with_their_rules_as_text_and_refuse_bad_ones_on_the_way_in() {
        let policy: QualityPolicy =
            serde_json::from_str(r#"{"rules": ["auc >= production.auc + 0.005"]}"#).unwrap();
        assert_eq!(policy.rules[0].text(), "auc >= production.auc + 0.005");
        assert_eq!(policy.baseline_alias, "production");
        assert_eq!(
            serde_json::to_value(&policy).unwrap()["rules"],
            serde_json::json!(["auc >= production.auc + 0.005"])
        );
        let bad = serde_json::from_str::<QualityPolicy>(r#"{"rules": ["auc => 0.9"]}"#)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not one of"), "{bad}");
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (text, reason) in [
            ("auc", "not METRIC OP VALUE"),
            ("auc => 0.9", "not one of"),
            ("auc >= banana", "not a number"),
            ("auc >= production.auc ^ 2", "not METRIC OP VALUE"),
            ("auc >= production.auc + x", "not a number"),
        ] {
            let error = Rule::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
        assert!(
            QualityPolicy {
                rules: vec![],
                baseline_alias: "production".into(),
                auto_rollout: None
            }
            .check()
            .is_err()
        );
    }
}
