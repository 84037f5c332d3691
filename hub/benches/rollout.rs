//! Rollout controller decisions (docs/BENCHMARKS.md): how many controller steps per second
//! the pure decision code takes for a 10,000-device rollout (wave order by hash, wave sizes,
//! the step with its gates), without the inventory and telemetry reads around it (those are
//! the hub's store and report costs, measured by the ingest bench).
//!
//! `cargo bench -p flotilla-hub --bench rollout -- [--devices N] [--rounds R]`

use std::time::Instant;

use flotilla_api::rollouts::RolloutSpec;
use flotilla_hub::rollout::controller::{Context, Input, RolloutState, WaveProgress, step};
use flotilla_hub::rollout::gates::{CohortFigures, GateInputs, evaluate};
use flotilla_hub::rollout::plan::wave_order;

fn arg(flag: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let devices = arg("--devices", 10_000);
    let rounds = arg("--rounds", 7);
    let targets: Vec<String> = (0..devices).map(|i| format!("dev-{i:016x}")).collect();
    let spec = RolloutSpec::from_toml("model = \"m\"\nversion = \"2\"\nsoak_seconds = 0").unwrap();
    let figures = |requests, errors, p99| CohortFigures {
        devices: 100,
        requests,
        errors,
        latency_p99_ms: Some(p99),
    };
    let inputs = GateInputs {
        new: figures(50_000, 20, 2.1),
        baseline: Some(figures(500_000, 150, 2.0)),
        input_drifted: Some(vec![]),
        prediction_drifted: Some(vec![]),
        reference_dataset_drift: None,
    };
    let mut order_ms = Vec::new();
    let mut steps_per_second = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let order = wave_order("rollout-bench", &targets);
        order_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(order.len(), devices);
        // A whole rollout, tick by tick: every wave installs, soaks and passes its gates.
        let started = Instant::now();
        let mut state = RolloutState::new();
        let mut steps = 0u64;
        let mut now = 0;
        while state.phase.is_active() {
            let gates = evaluate(&spec.gates, &inputs);
            let input = Input::Tick {
                progress: WaveProgress {
                    told: state.told,
                    installed: state.told,
                    failed: 0,
                    offline_pending: 0,
                },
                gates: Some(gates),
                rolled_back: false,
            };
            let ctx = Context {
                spec: &spec,
                targets: devices,
                now,
            };
            state = step(&ctx, &state, &input).unwrap().0;
            steps += 1;
            now += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        steps_per_second.push(steps as f64 / seconds);
    }
    println!(
        "rollout controller, {devices} targets: wave order (SHA-256 per device, sort) {:.1} ms; {:.0} controller steps per second with gate evaluation (median of {rounds})",
        median(order_ms),
        median(steps_per_second)
    );
}
