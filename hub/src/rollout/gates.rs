//! Health gates: canary analysis of the new version's cohort against the old version's over
//! the same windows. Pure: figures in, verdicts out. A gate with too little data is
//! inconclusive (the wave waits), never passed.

use serde::{Deserialize, Serialize};

use flotilla_api::rollouts::HealthGates;

/// One cohort's figures over the wave's windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortFigures {
    pub devices: u64,
    pub requests: u64,
    pub errors: u64,
    pub latency_p99_ms: Option<f64>,
}

impl CohortFigures {
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// What the gates look at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateInputs {
    pub new: CohortFigures,
    /// The old version's cohort; `None` when there is no old version (a first rollout).
    pub baseline: Option<CohortFigures>,
    /// Input features and prediction outputs of the new cohort drifting against the old
    /// cohort's (`None`: no verdict yet, too few rows).
    pub input_drifted: Option<Vec<String>>,
    pub prediction_drifted: Option<Vec<String>>,
    /// Dataset drift of the new cohort against the version's reference (`None`: no
    /// verdict); looked at only when the spec asks.
    pub reference_dataset_drift: Option<bool>,
}

pub use flotilla_api::rollouts::{GateResult, GateVerdict as Verdict};

fn result(gate: &str, verdict: Verdict) -> GateResult {
    GateResult {
        gate: gate.to_owned(),
        verdict,
    }
}

/// Every gate's verdict.
pub fn evaluate(gates: &HealthGates, inputs: &GateInputs) -> Vec<GateResult> {
    let new = &inputs.new;
    let mut results = Vec::new();
    let too_few = |who: &str, c: &CohortFigures| {
        Verdict::Inconclusive(format!(
            "{who} cohort has {} requests, fewer than the {} a verdict needs",
            c.requests, gates.min_requests
        ))
    };
    let new_enough = new.requests >= gates.min_requests;
    let baseline = inputs.baseline.as_ref();
    let baseline_enough = baseline.is_none_or(|b| b.requests >= gates.min_requests);

    // Error rate: at most the baseline's plus the allowed increase.
    results.push(result(
        "error_rate",
        if !new_enough {
            too_few("new", new)
        } else if !baseline_enough {
            too_few("old", baseline.expect("checked"))
        } else {
            let rate = new.error_rate().unwrap_or(0.0);
            let base = baseline.and_then(CohortFigures::error_rate).unwrap_or(0.0);
            let limit = base + gates.error_rate_increase_max;
            if rate > limit {
                Verdict::Fail(format!(
                    "error rate {:.2}% is over the old version's {:.2}% + {:.2}% ({} errors in {} requests)",
                    rate * 100.0,
                    base * 100.0,
                    gates.error_rate_increase_max * 100.0,
                    new.errors,
                    new.requests
                ))
            } else {
                Verdict::Pass
            }
        },
    ));

    // Latency p99: at most the baseline's times the allowed ratio.
    results.push(result(
        "latency_p99",
        match (baseline, new.latency_p99_ms) {
            _ if !new_enough => too_few("new", new),
            (Some(b), _) if !baseline_enough => too_few("old", b),
            (None, _) => Verdict::Pass,
            (Some(b), Some(p99)) => match b.latency_p99_ms {
                Some(base) if p99 > base * gates.latency_p99_ratio_max => Verdict::Fail(format!(
                    "latency p99 {p99:.2} ms is over the old version's {base:.2} ms × {}",
                    gates.latency_p99_ratio_max
                )),
                Some(_) => Verdict::Pass,
                None => Verdict::Inconclusive("the old cohort has no latency yet".into()),
            },
            (Some(_), None) => Verdict::Inconclusive("the new cohort has no latency yet".into()),
        },
    ));

    // Drift of the new cohort against the old one, inputs and predictions.
    for (gate, drifted, allowed) in [
        (
            "input_drift",
            &inputs.input_drifted,
            gates.input_drift_features_max,
        ),
        (
            "prediction_drift",
            &inputs.prediction_drifted,
            gates.prediction_drift_max,
        ),
    ] {
        results.push(result(
            gate,
            match (baseline, drifted) {
                (None, _) => Verdict::Pass,
                (Some(_), None) => Verdict::Inconclusive(
                    "too few rows on a side for a drift verdict against the old version".into(),
                ),
                (Some(_), Some(names)) if names.len() > allowed => Verdict::Fail(format!(
                    "{} drift against the old version: {} (at most {allowed} allowed)",
                    if gate == "input_drift" {
                        "inputs"
                    } else {
                        "predictions"
                    },
                    names.join(", ")
                )),
                _ => Verdict::Pass,
            },
        ));
    }
    if gates.check_reference_drift {
        results.push(result(
            "reference_drift",
            match inputs.reference_dataset_drift {
                None => Verdict::Inconclusive(
                    "no drift verdict against the reference yet (too few rows, or no reference)"
                        .into(),
                ),
                Some(true) => {
                    Verdict::Fail("the new cohort's inputs drift from the reference".into())
                }
                Some(false) => Verdict::Pass,
            },
        ));
    }
    results
}

/// All gates together: any failure fails, else any inconclusive waits, else pass.
pub fn overall(results: &[GateResult]) -> Verdict {
    let reasons = |pick: fn(&Verdict) -> Option<&String>| -> Vec<String> {
        results
            .iter()
            .filter_map(|r| pick(&r.verdict).map(|m| format!("{}: {m}", r.gate)))
            .collect()
    };
    let failed = reasons(|v| match v {
        Verdict::Fail(m) => Some(m),
        _ => None,
    });
    if !failed.is_empty() {
        return Verdict::Fail(failed.join("; "));
    }
    let waiting = reasons(|v| match v {
        Verdict::Inconclusive(m) => Some(m),
        _ => None,
    });
    if !waiting.is_empty() {
        return Verdict::Inconclusive(waiting.join("; "));
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cohort(requests: u64, errors: u64, p99: f64) -> CohortFigures {
        CohortFigures {
            devices: 10,
            requests,
            errors,
            latency_p99_ms: Some(p99),
        }
    }

    fn inputs(new: CohortFigures, baseline: CohortFigures) -> GateInputs {
        GateInputs {
            new,
            baseline: Some(baseline),
            input_drifted: Some(vec![]),
            prediction_drifted: Some(vec![]),
            reference_dataset_drift: None,
        }
    }

    #[test]
    fn a_healthy_canary_passes() {
        let r = evaluate(
            &HealthGates::default(),
            &inputs(cohort(5000, 10, 2.1), cohort(50000, 90, 2.0)),
        );
        assert_eq!(overall(&r), Verdict::Pass, "{r:?}");
    }

    #[test]
    fn more_errors_or_slower_fails_with_the_figures() {
        let g = HealthGates::default();
        let errors = overall(&evaluate(
            &g,
            &inputs(cohort(5000, 300, 2.0), cohort(50000, 50, 2.0)),
        ));
        let Verdict::Fail(reason) = errors else {
            panic!("{errors:?}")
        };
        assert!(
            reason.contains("error rate 6.00%") && reason.contains("0.10%"),
            "{reason}"
        );
        let slow = overall(&evaluate(
            &g,
            &inputs(cohort(5000, 0, 2.5), cohort(50000, 0, 2.0)),
        ));
        assert!(
            matches!(&slow, Verdict::Fail(m) if m.contains("latency p99 2.50 ms")),
            "{slow:?}"
        );
        let mut drifting = inputs(cohort(5000, 0, 2.0), cohort(50000, 0, 2.0));
        drifting.prediction_drifted = Some(vec!["label".into()]);
        assert!(matches!(
            overall(&evaluate(&g, &drifting)),
            Verdict::Fail(m) if m.contains("predictions drift against the old version: label")
        ));
    }

    #[test]
    fn too_little_data_waits_instead_of_passing() {
        let g = HealthGates::default();
        let small = overall(&evaluate(
            &g,
            &inputs(cohort(200, 0, 2.0), cohort(50000, 0, 2.0)),
        ));
        assert!(
            matches!(&small, Verdict::Inconclusive(m) if m.contains("200 requests")),
            "{small:?}"
        );
        let mut no_verdict = inputs(cohort(5000, 0, 2.0), cohort(50000, 0, 2.0));
        no_verdict.input_drifted = None;
        assert!(matches!(
            overall(&evaluate(&g, &no_verdict)),
            Verdict::Inconclusive(_)
        ));
        // Failures win over waiting.
        let mut both = inputs(cohort(5000, 900, 2.0), cohort(50000, 0, 2.0));
        both.input_drifted = None;
        assert!(matches!(overall(&evaluate(&g, &both)), Verdict::Fail(_)));
    }

    #[test]
    fn a_first_rollout_has_absolute_gates() {
        let g = HealthGates::default();
        let first = GateInputs {
            new: cohort(5000, 0, 9.0),
            ..GateInputs::default()
        };
        assert_eq!(overall(&evaluate(&g, &first)), Verdict::Pass);
        let failing = GateInputs {
            new: cohort(5000, 100, 9.0),
            ..GateInputs::default()
        };
        assert!(matches!(overall(&evaluate(&g, &failing)), Verdict::Fail(_)));
    }
}
