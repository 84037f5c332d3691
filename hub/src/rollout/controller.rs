//! The rollout controller: a pure state machine. It takes the rollout's state, one input (a
//! tick with what the fleet shows, or an operator's command) and `now`, and returns the next
//! state and the actions to carry out. It never touches the store, the broker or a clock;
//! the service around it (rollout/mod.rs) does, and persists the state after every step, so a
//! restarted hub resumes exactly where it was.

use serde::{Deserialize, Serialize};

use super::gates::{GateResult, Verdict};
use super::plan::{rate_allowance, wave_size};
use flotilla_api::rollouts::{OfflinePolicy, OnFailure, RolloutSpec};

pub use flotilla_api::rollouts::RolloutPhase as Phase;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub phase: Phase,
    /// The current wave, from 1 (0 before the first).
    pub wave: usize,
    /// Devices told to install so far (a prefix of the wave order).
    pub told: usize,
    pub started_at: Option<i64>,
    pub wave_started_at: Option<i64>,
    /// When the wave's installs met the success threshold: its soak starts here.
    pub installs_met_at: Option<i64>,
    /// Why the rollout is paused, failed or waiting on its gates.
    pub reason: Option<String>,
    /// The last gate verdicts, for status.
    pub gates: Vec<GateResult>,
}

impl RolloutState {
    pub fn new() -> RolloutState {
        RolloutState {
            phase: Phase::Pending,
            wave: 0,
            told: 0,
            started_at: None,
            wave_started_at: None,
            installs_met_at: None,
            reason: None,
            gates: Vec::new(),
        }
    }
}

impl Default for RolloutState {
    fn default() -> Self {
        RolloutState::new()
    }
}

/// What the fleet shows about the current wave's devices (all waves so far).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaveProgress {
    /// Devices told to install so far.
    pub told: usize,
    pub installed: usize,
    pub failed: usize,
    /// Told, not installed, not failed, and offline.
    pub offline_pending: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Periodic: the wave's progress, the gates (evaluated by the caller when installs were
    /// met and the soak is over; `None` otherwise), and, while rolling back, whether every
    /// device that still can be is back on its previous version.
    Tick {
        progress: WaveProgress,
        gates: Option<Vec<GateResult>>,
        rolled_back: bool,
    },
    Pause,
    Resume,
    Approve,
    Abort,
    Rollback,
    PromoteNow,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set the new version as desired on the first `upto` devices of the wave order.
    Tell { upto: usize },
    /// Give every told device its previous version back as desired.
    RollBack,
    /// Point the spec's alias at the new version.
    MoveAlias,
    /// An audit event with its reason.
    Record { kind: String, detail: String },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What the controller needs besides its state: the spec, the number of targets, `now`.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub spec: &'a RolloutSpec,
    pub targets: usize,
    pub now: i64,
}

fn record(kind: &str, detail: String) -> Action {
    Action::Record {
        kind: kind.to_owned(),
        detail,
    }
}

/// Devices that may have been told by `now` in `wave`: the wave's size, held back by the
/// download rate.
fn allowed(ctx: &Context, state: &RolloutState, wave: usize) -> usize {
    let size = wave_size(&ctx.spec.waves, wave, ctx.targets);
    let minutes = state
        .started_at
        .map_or(0.0, |s| (ctx.now - s).max(0) as f64 / 60.0);
    match rate_allowance(&ctx.spec.rate, minutes) {
        Some(limit) => size.min(limit.max(state.told)),
        None => size,
    }
}

fn start_wave(ctx: &Context, mut state: RolloutState, wave: usize) -> (RolloutState, Vec<Action>) {
    state.phase = Phase::Running;
    state.wave = wave;
    state.started_at.get_or_insert(ctx.now);
    state.wave_started_at = Some(ctx.now);
    state.installs_met_at = None;
    state.reason = None;
    state.gates.clear();
    let upto = allowed(ctx, &state, wave);
    let mut actions = vec![record(
        "rollout.wave_started",
        format!(
            "wave {wave} of {}: {}% of {} devices ({} devices)",
            ctx.spec.waves.len(),
            ctx.spec.waves[wave - 1],
            ctx.targets,
            wave_size(&ctx.spec.waves, wave, ctx.targets)
        ),
    )];
    if upto > state.told {
        state.told = upto;
        actions.push(Action::Tell { upto });
    }
    (state, actions)
}

/// The wave after the current one: approval first when the spec asks for it.
fn advance(ctx: &Context, state: RolloutState) -> (RolloutState, Vec<Action>) {
    let next = state.wave + 1;
    if next > ctx.spec.waves.len() {
        return complete(ctx, state, "every wave passed its gates".into());
    }
    if ctx.spec.approve_before.contains(&next) {
        let mut state = state;
        state.phase = Phase::WaitingForApproval;
        state.reason = Some(format!("wave {next} waits for approval"));
        return (
            state,
            vec![record(
                "rollout.waiting_for_approval",
                format!("wave {next} waits for flotilla rollout approve"),
            )],
        );
    }
    start_wave(ctx, state, next)
}

fn complete(ctx: &Context, mut state: RolloutState, why: String) -> (RolloutState, Vec<Action>) {
    state.phase = Phase::Completed;
    state.reason = None;
    let mut actions = Vec::new();
    if state.told < ctx.targets {
        state.told = ctx.targets;
        actions.push(Action::Tell { upto: ctx.targets });
    }
    if ctx.spec.promote_alias.is_some() {
        actions.push(Action::MoveAlias);
    }
    actions.push(record("rollout.completed", why));
    (state, actions)
}

fn fail(ctx: &Context, mut state: RolloutState, why: String) -> (RolloutState, Vec<Action>) {
    state.reason = Some(why.clone());
    match ctx.spec.on_failure {
        OnFailure::Rollback => {
            state.phase = Phase::RollingBack;
            (
                state,
                vec![
                    record("rollout.failed", why.clone()),
                    Action::RollBack,
                    record("rollout.rolling_back", why),
                ],
            )
        }
        OnFailure::Pause => {
            state.phase = Phase::Paused;
            (
                state,
                vec![
                    record("rollout.failed", why.clone()),
                    record("rollout.paused", why),
                ],
            )
        }
    }
}

/// One step. Operator commands that make no sense in the current phase are refused with the
/// reason; ticks never are.
pub fn step(
    ctx: &Context,
    state: &RolloutState,
    input: &Input,
) -> Result<(RolloutState, Vec<Action>), Refused> {
    let state = state.clone();
    let phase = state.phase;
    let refuse = |what: &str| {
        Err(Refused(format!(
            "cannot {what}: the rollout is {}",
            phase.name()
        )))
    };
    match input {
        Input::Tick {
            progress,
            gates,
            rolled_back,
        } => Ok(tick(ctx, state, progress, gates.as_deref(), *rolled_back)),
        Input::Pause => match phase {
            Phase::Pending | Phase::Running | Phase::WaitingForApproval => {
                let mut state = state;
                state.phase = Phase::Paused;
                state.reason = Some("paused by the operator".into());
                Ok((
                    state,
                    vec![record("rollout.paused", "paused by the operator".into())],
                ))
            }
            _ => refuse("pause"),
        },
        Input::Resume => match phase {
            Phase::Paused if state.wave == 0 => {
                let mut state = state;
                state.phase = Phase::Pending;
                state.reason = None;
                Ok((
                    state,
                    vec![record("rollout.resumed", "by the operator".into())],
                ))
            }
            Phase::Paused => {
                let mut state = state;
                state.phase = Phase::Running;
                state.reason = None;
                // The wave soaks again from here: figures from before the pause do not count.
                if state.installs_met_at.is_some() {
                    state.installs_met_at = Some(ctx.now);
                }
                state.wave_started_at = Some(ctx.now);
                Ok((
                    state,
                    vec![record(
                        "rollout.resumed",
                        "by the operator; the wave soaks again".into(),
                    )],
                ))
            }
            _ => refuse("resume"),
        },
        Input::Approve => match phase {
            Phase::WaitingForApproval => {
                let next = state.wave + 1;
                let (state, mut actions) = start_wave(ctx, state, next);
                actions.insert(
                    0,
                    record("rollout.approved", format!("wave {next} approved")),
                );
                Ok((state, actions))
            }
            _ => refuse("approve"),
        },
        Input::Abort => {
            if !phase.is_active() || phase == Phase::RollingBack {
                return refuse("abort");
            }
            let mut state = state;
            state.phase = Phase::Aborted;
            state.reason = Some("aborted by the operator; devices keep what they have".into());
            Ok((
                state,
                vec![record(
                    "rollout.aborted",
                    "by the operator; no further waves, devices keep what they have".into(),
                )],
            ))
        }
        Input::Rollback => {
            if !phase.is_active() && phase != Phase::Completed || phase == Phase::RollingBack {
                return refuse("roll back");
            }
            let mut state = state;
            state.phase = Phase::RollingBack;
            state.reason = Some("rolled back by the operator".into());
            Ok((
                state,
                vec![
                    Action::RollBack,
                    record("rollout.rolling_back", "by the operator".into()),
                ],
            ))
        }
        Input::PromoteNow => match phase {
            Phase::Pending | Phase::Running | Phase::WaitingForApproval | Phase::Paused => {
                let mut state = state;
                state.started_at.get_or_insert(ctx.now);
                Ok(complete(
                    ctx,
                    state,
                    "promoted by the operator: the remaining waves and gates skipped".into(),
                ))
            }
            _ => refuse("promote"),
        },
    }
}

fn tick(
    ctx: &Context,
    state: RolloutState,
    progress: &WaveProgress,
    gates: Option<&[GateResult]>,
    rolled_back: bool,
) -> (RolloutState, Vec<Action>) {
    match state.phase {
        Phase::Pending => {
            if ctx.spec.approve_before.contains(&1) {
                let mut state = state;
                state.phase = Phase::WaitingForApproval;
                state.reason = Some("wave 1 waits for approval".into());
                return (
                    state,
                    vec![record(
                        "rollout.waiting_for_approval",
                        "wave 1 waits for flotilla rollout approve".into(),
                    )],
                );
            }
            start_wave(ctx, state, 1)
        }
        Phase::RollingBack if rolled_back => {
            let mut state = state;
            state.phase = Phase::RolledBack;
            (
                state,
                vec![record(
                    "rollout.rolled_back",
                    "every reachable device is back on its previous version".into(),
                )],
            )
        }
        Phase::Running => running(ctx, state, progress, gates),
        _ => (state, Vec::new()),
    }
}

fn running(
    ctx: &Context,
    mut state: RolloutState,
    progress: &WaveProgress,
    gates: Option<&[GateResult]>,
) -> (RolloutState, Vec<Action>) {
    let mut actions = Vec::new();
    // More devices, as the rate allows.
    let upto = allowed(ctx, &state, state.wave);
    if upto > state.told {
        state.told = upto;
        actions.push(Action::Tell { upto });
    }
    let size = wave_size(&ctx.spec.waves, state.wave, ctx.targets);
    let counted = match ctx.spec.offline {
        OfflinePolicy::Wait => size,
        OfflinePolicy::Skip => size.saturating_sub(progress.offline_pending),
    }
    .max(1);
    let wave = state.wave;
    let failed_share = progress.failed as f64 / counted as f64;
    if failed_share > ctx.spec.install_failure_max {
        let (state, more) = fail(
            ctx,
            state,
            format!(
                "wave {wave}: {} of {counted} installs failed ({:.1}%, at most {:.1}% allowed)",
                progress.failed,
                failed_share * 100.0,
                ctx.spec.install_failure_max * 100.0
            ),
        );
        actions.extend(more);
        return (state, actions);
    }
    if state.installs_met_at.is_none() {
        let installed_share = progress.installed as f64 / counted as f64;
        if state.told >= size && installed_share >= ctx.spec.install_success {
            state.installs_met_at = Some(ctx.now);
            state.reason = Some(format!(
                "wave {}: {} of {counted} installed; soaking {} s",
                state.wave, progress.installed, ctx.spec.soak_seconds
            ));
            actions.push(record(
                "rollout.wave_installed",
                format!(
                    "wave {}: {} of {counted} installed ({:.1}%)",
                    state.wave,
                    progress.installed,
                    installed_share * 100.0
                ),
            ));
        } else if ctx.now - state.wave_started_at.unwrap_or(ctx.now)
            > ctx.spec.install_timeout_seconds as i64
        {
            let (state, more) = fail(
                ctx,
                state,
                format!(
                    "wave {wave}: only {} of {counted} installed within {} s ({:.1}%, {:.1}% needed)",
                    progress.installed,
                    ctx.spec.install_timeout_seconds,
                    installed_share * 100.0,
                    ctx.spec.install_success * 100.0
                ),
            );
            actions.extend(more);
            return (state, actions);
        }
        return (state, actions);
    }
    let soaked = ctx.now - state.installs_met_at.expect("checked") >= ctx.spec.soak_seconds as i64;
    let Some(results) = gates.filter(|_| soaked) else {
        return (state, actions);
    };
    state.gates = results.to_vec();
    match super::gates::overall(results) {
        Verdict::Pass => {
            actions.push(record(
                "rollout.wave_passed",
                format!("wave {}: every gate passed", state.wave),
            ));
            let (state, more) = advance(ctx, state);
            actions.extend(more);
            (state, actions)
        }
        Verdict::Fail(why) => {
            let (state, more) = fail(ctx, state, format!("wave {wave}: {why}"));
            actions.extend(more);
            (state, actions)
        }
        Verdict::Inconclusive(why) => {
            state.reason = Some(format!("wave {}: waiting: {why}", state.wave));
            (state, actions)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::gates::GateResult;
    use proptest::prelude::*;

    fn spec() -> RolloutSpec {
        RolloutSpec::from_toml(
            "model = \"iris\"\nversion = \"2\"\nwaves = [10, 50, 100]\nsoak_seconds = 60\ninstall_timeout_seconds = 300",
        )
        .unwrap()
    }

    fn ctx(spec: &RolloutSpec, now: i64) -> Context<'_> {
        Context {
            spec,
            targets: 100,
            now,
        }
    }

    fn pass() -> Vec<GateResult> {
        vec![GateResult {
            gate: "error_rate".into(),
            verdict: Verdict::Pass,
        }]
    }

    fn verdict(v: Verdict) -> Vec<GateResult> {
        vec![GateResult {
            gate: "error_rate".into(),
            verdict: v,
        }]
    }

    fn tick(installed: usize, failed: usize, gates: Option<Vec<GateResult>>) -> Input {
        Input::Tick {
            progress: WaveProgress {
                told: 0,
                installed,
                failed,
                offline_pending: 0,
            },
            gates,
            rolled_back: false,
        }
    }

    fn kinds(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Record { kind, .. } => kind.as_str(),
                Action::Tell { .. } => "tell",
                Action::RollBack => "roll_back",
                Action::MoveAlias => "move_alias",
            })
            .collect()
    }

    #[test]
    fn a_healthy_rollout_goes_wave_by_wave_then_moves_the_alias() {
        let spec = spec();
        let (s, a) = step(&ctx(&spec, 0), &RolloutState::new(), &tick(0, 0, None)).unwrap();
        assert_eq!((s.phase, s.wave, s.told), (Phase::Running, 1, 10));
        assert_eq!(a[1], Action::Tell { upto: 10 });
        // Installed, then soaking: gates are not looked at before the soak is over.
        let (s, a) = step(&ctx(&spec, 10), &s, &tick(10, 0, Some(pass()))).unwrap();
        assert_eq!(s.installs_met_at, Some(10));
        assert_eq!(kinds(&a), ["rollout.wave_installed"]);
        let (s, _) = step(&ctx(&spec, 30), &s, &tick(10, 0, Some(pass()))).unwrap();
        assert_eq!(s.wave, 1);
        let (s, a) = step(&ctx(&spec, 70), &s, &tick(10, 0, Some(pass()))).unwrap();
        assert_eq!((s.wave, s.told), (2, 50));
        assert_eq!(
            kinds(&a),
            ["rollout.wave_passed", "rollout.wave_started", "tell"]
        );
        let (s, _) = step(&ctx(&spec, 80), &s, &tick(50, 0, None)).unwrap();
        let (s, _) = step(&ctx(&spec, 140), &s, &tick(50, 0, Some(pass()))).unwrap();
        assert_eq!((s.wave, s.told), (3, 100));
        let (s, _) = step(&ctx(&spec, 150), &s, &tick(100, 0, None)).unwrap();
        let (s, a) = step(&ctx(&spec, 210), &s, &tick(100, 0, Some(pass()))).unwrap();
        assert_eq!(s.phase, Phase::Completed);
        assert_eq!(
            kinds(&a),
            ["rollout.wave_passed", "move_alias", "rollout.completed"]
        );
    }

    #[test]
    fn a_failing_gate_rolls_back_or_pauses_with_its_reason() {
        let spec = spec();
        let (s, _) = step(&ctx(&spec, 0), &RolloutState::new(), &tick(0, 0, None)).unwrap();
        let (s, _) = step(&ctx(&spec, 5), &s, &tick(10, 0, None)).unwrap();
        let failing = verdict(Verdict::Fail("error rate 6.00% is over 1.00%".into()));
        let (rolling, a) = step(&ctx(&spec, 70), &s, &tick(10, 0, Some(failing.clone()))).unwrap();
        assert_eq!(rolling.phase, Phase::RollingBack);
        assert!(
            rolling
                .reason
                .as_deref()
                .unwrap()
                .contains("error rate 6.00%")
        );
        assert_eq!(
            kinds(&a),
            ["rollout.failed", "roll_back", "rollout.rolling_back"]
        );
        let done = Input::Tick {
            progress: WaveProgress::default(),
            gates: None,
            rolled_back: true,
        };
        let (back, _) = step(&ctx(&spec, 80), &rolling, &done).unwrap();
        assert_eq!(back.phase, Phase::RolledBack);
        let mut pausing = spec.clone();
        pausing.on_failure = OnFailure::Pause;
        let (paused, a) = step(&ctx(&pausing, 70), &s, &tick(10, 0, Some(failing))).unwrap();
        assert_eq!(paused.phase, Phase::Paused);
        assert!(!a.contains(&Action::RollBack));
    }

    #[test]
    fn install_failures_and_timeouts_fail_the_wave() {
        let spec = spec();
        let (s, _) = step(&ctx(&spec, 0), &RolloutState::new(), &tick(0, 0, None)).unwrap();
        let (failed, _) = step(&ctx(&spec, 5), &s, &tick(3, 2, None)).unwrap();
        assert_eq!(failed.phase, Phase::RollingBack);
        assert!(failed.reason.unwrap().contains("2 of 10 installs failed"));
        let (waiting, _) = step(&ctx(&spec, 200), &s, &tick(5, 0, None)).unwrap();
        assert_eq!(waiting.phase, Phase::Running);
        let (late, _) = step(&ctx(&spec, 301), &s, &tick(5, 0, None)).unwrap();
        assert!(
            late.reason
                .unwrap()
                .contains("only 5 of 10 installed within 300 s")
        );
    }

    #[test]
    fn inconclusive_gates_wait() {
        let spec = spec();
        let (s, _) = step(&ctx(&spec, 0), &RolloutState::new(), &tick(0, 0, None)).unwrap();
        let (s, _) = step(&ctx(&spec, 5), &s, &tick(10, 0, None)).unwrap();
        let unsure = verdict(Verdict::Inconclusive("200 requests".into()));
        let (s, a) = step(&ctx(&spec, 100), &s, &tick(10, 0, Some(unsure))).unwrap();
        assert_eq!((s.phase, s.wave), (Phase::Running, 1));
        assert!(a.is_empty());
        assert!(
            s.reason
                .unwrap()
                .contains("waiting: error_rate: 200 requests")
        );
    }

    #[test]
    fn approval_and_operator_commands() {
        let mut spec = spec();
        spec.approve_before = vec![2];
        let (s, _) = step(&ctx(&spec, 0), &RolloutState::new(), &tick(0, 0, None)).unwrap();
        assert!(
            step(&ctx(&spec, 1), &s, &Input::Approve)
                .unwrap_err()
                .0
                .contains("cannot approve: the rollout is running")
        );
        let (s, _) = step(&ctx(&spec, 5), &s, &tick(10, 0, None)).unwrap();
        let (s, _) = step(&ctx(&spec, 70), &s, &tick(10, 0, Some(pass()))).unwrap();
        assert_eq!((s.phase, s.wave), (Phase::WaitingForApproval, 1));
        let (s, a) = step(&ctx(&spec, 80), &s, &Input::Approve).unwrap();
        assert_eq!((s.phase, s.wave, s.told), (Phase::Running, 2, 50));
        assert_eq!(kinds(&a)[0], "rollout.approved");
        let (paused, _) = step(&ctx(&spec, 90), &s, &Input::Pause).unwrap();
        assert_eq!(paused.phase, Phase::Paused);
        // Nothing moves while paused.
        let (still, a) = step(&ctx(&spec, 500), &paused, &tick(50, 0, Some(pass()))).unwrap();
        assert_eq!((still.phase, a.len()), (Phase::Paused, 0));
        let (resumed, _) = step(&ctx(&spec, 600), &paused, &Input::Resume).unwrap();
        assert_eq!(resumed.phase, Phase::Running);
        let (done, a) = step(&ctx(&spec, 610), &resumed, &Input::PromoteNow).unwrap();
        assert_eq!(done.phase, Phase::Completed);
        assert!(a.contains(&Action::Tell { upto: 100 }) && a.contains(&Action::MoveAlias));
        assert!(step(&ctx(&spec, 620), &done, &Input::Pause).is_err());
        // A completed rollout can still be rolled back; an aborted one cannot.
        let (back, _) = step(&ctx(&spec, 630), &done, &Input::Rollback).unwrap();
        assert_eq!(back.phase, Phase::RollingBack);
        let (aborted, _) = step(&ctx(&spec, 640), &resumed, &Input::Abort).unwrap();
        assert_eq!(aborted.phase, Phase::Aborted);
        assert!(step(&ctx(&spec, 650), &aborted, &Input::Rollback).is_err());
    }

    #[test]
    fn the_rate_limit_holds_back_how_many_are_told() {
        let mut spec = spec();
        spec.rate.devices_per_minute = 4;
        let (s, _) = step(&ctx(&spec, 0), &RolloutState::new(), &tick(0, 0, None)).unwrap();
        assert_eq!(s.told, 4);
        let (s, a) = step(&ctx(&spec, 60), &s, &tick(4, 0, None)).unwrap();
        assert_eq!((s.told, a), (4, vec![]));
        let (s, a) = step(&ctx(&spec, 90), &s, &tick(4, 0, None)).unwrap();
        assert_eq!((s.told, a[0].clone()), (6, Action::Tell { upto: 6 }));
        // The wave is not installed until all its devices were told.
        assert_eq!(s.installs_met_at, None);
    }

    fn any_input() -> impl Strategy<Value = Input> {
        let verdicts = prop_oneof![
            Just(None),
            Just(Some(Verdict::Pass)),
            Just(Some(Verdict::Fail("bad".into()))),
            Just(Some(Verdict::Inconclusive("wait".into()))),
        ];
        prop_oneof![
            (0usize..=100, 0usize..=10, verdicts, any::<bool>()).prop_map(
                |(installed, failed, v, rolled_back)| Input::Tick {
                    progress: WaveProgress {
                        told: 0,
                        installed,
                        failed,
                        offline_pending: 0
                    },
                    gates: v.map(verdict),
                    rolled_back,
                }
            ),
            Just(Input::Pause),
            Just(Input::Resume),
            Just(Input::Approve),
            Just(Input::Abort),
            Just(Input::Rollback),
            Just(Input::PromoteNow),
        ]
    }

    proptest! {
        #[test]
        fn whatever_happens_the_controller_keeps_its_invariants(
            inputs in proptest::collection::vec((any_input(), 0i64..400), 1..60),
            approve in proptest::collection::vec(1usize..=3, 0..3),
        ) {
            let mut spec = spec();
            spec.approve_before = approve;
            let mut state = RolloutState::new();
            let mut now = 0;
            let mut told_before = 0;
            for (input, dt) in inputs {
                now += dt;
                let before = state.clone();
                match step(&ctx(&spec, now), &state, &input) {
                    Ok((next, actions)) => {
                        // Finished rollouts stay finished, except a completed one rolled back.
                        if !before.phase.is_active() {
                            prop_assert!(
                                next.phase == before.phase
                                    || (before.phase == Phase::Completed && next.phase == Phase::RollingBack)
                            );
                        }
                        // Devices are told in order, never more than the targets, never fewer
                        // than before; a wave never goes backwards.
                        prop_assert!(next.told >= told_before && next.told <= 100);
                        prop_assert!(next.wave >= before.wave && next.wave <= spec.waves.len());
                        for action in &actions {
                            if let Action::Tell { upto } = action {
                                prop_assert!(*upto > before.told && *upto <= 100);
                            }
                        }
                        // A rollback action comes only with the rolling-back phase.
                        if actions.contains(&Action::RollBack) {
                            prop_assert_eq!(next.phase, Phase::RollingBack);
                        }
                        if next.phase == Phase::Completed && before.phase != Phase::Completed {
                            prop_assert_eq!(next.told, 100);
                        }
                        told_before = next.told;
                        state = next;
                    }
                    Err(Refused(reason)) => {
                        prop_assert!(reason.starts_with("cannot "));
                        let is_tick = matches!(input, Input::Tick { .. });
                        prop_assert!(!is_tick);
                    }
                }
            }
        }
    }
}
