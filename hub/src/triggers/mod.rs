//! Retraining triggers: per model, a rule watches the production version's fleet telemetry
//! window by window (drift on a share of devices, error rate) and, when a condition holds
//! long enough, calls a webhook or runs a command, with cooldown, one run at a time, retries
//! with backoff and a history. `rule` (the spec) and `decide` (streaks, cooldown) are pure;
//! `deliver` does one attempt of an action; this module reads the stores, keeps the run
//! records and schedules the attempts.

pub mod decide;
pub mod deliver;
pub use flotilla_api::triggers::rule;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_api::triggers::{
    CapturedDataLinks, ReportOrError, RunStatus, TriggerPayload, TriggerRun,
};
use flotilla_common::retry::{RetryDecision, RetryPolicy, retry};

use crate::registry::{Registry, RegistryError};
use crate::store::{StoreError, TriggerRunRecord};
use crate::telemetry::{Against, SliceQuery, Telemetry, TelemetryError, compare};
use decide::{History, Observation, Reason, Streaks, Suppressed};
use deliver::Attempt;
use rule::{RuleError, TriggerRule};

pub const TRIGGER_FIRED: &str = "trigger.fired";
pub const TRIGGER_SUCCEEDED: &str = "trigger.succeeded";
pub const TRIGGER_FAILED: &str = "trigger.failed";

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{0}")]
    Rule(#[from] RuleError),
    #[error("model {0:?} has no trigger rule; set one with flotilla trigger set")]
    NoRule(String),
    #[error("unknown model {0:?}: push a version before giving it a trigger")]
    UnknownModel(String),
    #[error("no trigger run {0}; flotilla trigger history lists them")]
    UnknownRun(String),
    #[error("{0}")]
    Suppressed(Suppressed),
    #[error(
        "this hub runs no commands for triggers: whoever may set a rule could run any program as the hub's user; set `[triggers] allow_commands = true` in the hub's config file (hub.toml) to allow it, or use a webhook"
    )]
    CommandsNotAllowed,
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// A stored run as the API shows it.
fn run_view(record: TriggerRunRecord) -> Result<TriggerRun, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("trigger run {}: {what}", record.id));
    Ok(TriggerRun {
        payload: serde_json::from_str(&record.payload)
            .map_err(|e| corrupt(&format!("payload: {e}")))?,
        reason: Reason::parse(&record.reason).ok_or_else(|| corrupt("reason"))?,
        status: RunStatus::parse(&record.status).ok_or_else(|| corrupt("status"))?,
        id: record.id,
        model: record.model,
        version: record.version,
        attempts: record.attempts,
        fired_at: record.fired_at,
        updated: record.updated,
        outcome: record.outcome,
    })
}

/// What the evaluator remembers per model between windows (not persisted: after a restart
/// streaks start again, while cooldowns hold because they come from the stored runs).
#[derive(Debug, Clone, Default)]
struct RuleProgress {
    /// The rule this progress was made under.
    rule: Option<TriggerRule>,
    streaks: Streaks,
    /// The end of the last window evaluated (Unix ms).
    evaluated_until_ms: Option<i64>,
}

/// The most windows caught up in one pass (after a pause or a restart).
const MAX_CATCH_UP: i64 = 10;

#[derive(Debug)]
pub struct Triggers {
    registry: Arc<Registry>,
    telemetry: Arc<Telemetry>,
    /// The admin API's URL, for the links in payloads and the command's environment.
    hub_url: String,
    /// Where the payload files of command runs are written.
    work_dir: PathBuf,
    /// Whether rules may run commands (`[triggers] allow_commands`).
    allow_commands: bool,
    /// The hub's CA certificate, told to commands (`FLOTILLA_CA_FILE`) so they can call
    /// the https API back.
    ca_file: Option<PathBuf>,
    progress: Mutex<BTreeMap<String, RuleProgress>>,
    /// Deciding and recording a run happen under this lock, so two evaluations (or an
    /// evaluation and a manual fire) never both start one.
    starting: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_run_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    format!("trg-{}", hex::encode(bytes))
}

impl Triggers {
    pub fn new(
        registry: Arc<Registry>,
        telemetry: Arc<Telemetry>,
        hub_url: String,
        work_dir: PathBuf,
        allow_commands: bool,
        ca_file: Option<PathBuf>,
    ) -> Triggers {
        Triggers {
            registry,
            telemetry,
            hub_url,
            work_dir,
            allow_commands,
            ca_file,
            progress: Mutex::new(BTreeMap::new()),
            starting: Mutex::new(()),
        }
    }

    /// Runs left in flight by a previous hub process are marked interrupted (a webhook
    /// receiver may have seen them; re-sending from here could duplicate a retraining).
    pub fn recover(&self) -> Result<usize, TriggerError> {
        let count = self
            .registry
            .store()
            .interrupt_trigger_runs(self.registry.now())?;
        if count > 0 {
            tracing::warn!(count, "trigger runs interrupted by the last hub stop");
        }
        Ok(count)
    }

    pub fn set_rule(
        &self,
        model: &str,
        rule: &TriggerRule,
        actor: &str,
    ) -> Result<(), TriggerError> {
        rule.check()?;
        if rule.action.command.is_some() && !self.allow_commands {
            return Err(TriggerError::CommandsNotAllowed);
        }
        let store = self.registry.store();
        if store.versions(model)?.is_empty() {
            return Err(TriggerError::UnknownModel(model.to_owned()));
        }
        let now = self.registry.now();
        let text = serde_json::to_string(rule).expect("rules serialize");
        store.set_trigger_rule(model, Some(&text), now)?;
        store.audit(
            now,
            actor,
            "trigger.set",
            &format!(
                "{model}: {}",
                serde_json::to_string(&rule.redacted()).expect("rules serialize")
            ),
        )?;
        lock(&self.progress).remove(model);
        Ok(())
    }

    pub fn remove_rule(&self, model: &str, actor: &str) -> Result<(), TriggerError> {
        self.rule(model)?;
        let store = self.registry.store();
        let now = self.registry.now();
        store.set_trigger_rule(model, None, now)?;
        store.audit(now, actor, "trigger.remove", model)?;
        lock(&self.progress).remove(model);
        Ok(())
    }

    pub fn rule(&self, model: &str) -> Result<TriggerRule, TriggerError> {
        self.rules()?
            .remove(model)
            .ok_or_else(|| TriggerError::NoRule(model.to_owned()))
    }

    fn rules(&self) -> Result<BTreeMap<String, TriggerRule>, TriggerError> {
        let mut out = BTreeMap::new();
        for (model, text) in self.registry.store().trigger_rules()? {
            let rule: TriggerRule = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("trigger rule of {model}: {e}")))?;
            out.insert(model, rule);
        }
        Ok(out)
    }

    pub fn runs(&self, model: Option<&str>, limit: u32) -> Result<Vec<TriggerRun>, TriggerError> {
        self.registry
            .store()
            .trigger_runs(model, limit)?
            .into_iter()
            .map(|r| run_view(r).map_err(TriggerError::from))
            .collect()
    }

    pub fn run(&self, id: &str) -> Result<TriggerRun, TriggerError> {
        let record = self
            .registry
            .store()
            .trigger_run(id)?
            .ok_or_else(|| TriggerError::UnknownRun(id.to_owned()))?;
        Ok(run_view(record)?)
    }

    fn history(&self, model: &str) -> Result<History, TriggerError> {
        let last = self.registry.store().trigger_runs(Some(model), 1)?;
        Ok(History {
            last_fired: last.first().map(|r| r.fired_at),
            in_flight: last
                .first()
                .is_some_and(|r| RunStatus::parse(&r.status).is_some_and(RunStatus::in_flight)),
        })
    }

    /// The version the rule watches, if its alias is set.
    fn watched_version(
        &self,
        model: &str,
        rule: &TriggerRule,
    ) -> Result<Option<u64>, TriggerError> {
        Ok(self
            .registry
            .store()
            .aliases(model)?
            .get(&rule.alias)
            .copied())
    }

    /// An operator's request: fires now whatever the telemetry says (cooldown does not
    /// apply; a run still in flight does). Call from a blocking context.
    pub fn fire_manual(
        self: &Arc<Self>,
        model: &str,
        note: Option<String>,
        actor: &str,
    ) -> Result<TriggerRun, TriggerError> {
        let rule = self.rule(model)?;
        let version = self.watched_version(model, &rule)?;
        let now_ms = self.registry.now() * 1000;
        let span = (now_ms - rule.window_seconds as i64 * 1000, now_ms);
        self.start_run(
            model,
            &rule,
            Reason::Manual,
            version,
            &[],
            span,
            note,
            actor,
        )
    }

    /// One evaluation pass over every rule: each complete window since the last pass is
    /// observed in order; conditions that hold long enough start a run. Returns the runs
    /// started. Call from a blocking context (reads the stores).
    pub fn evaluate(self: &Arc<Self>, now_ms: i64) -> Result<Vec<TriggerRun>, TriggerError> {
        let mut started = Vec::new();
        let rules = self.rules()?;
        lock(&self.progress).retain(|model, _| rules.contains_key(model));
        for (model, rule) in rules {
            if rule.drift.is_none() && rule.error_rate.is_none() {
                continue; // manual only
            }
            match self.evaluate_rule(&model, &rule, now_ms) {
                Ok(Some(run)) => started.push(run),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%model, %error, "trigger evaluation of this model failed")
                }
            }
        }
        Ok(started)
    }

    fn evaluate_rule(
        self: &Arc<Self>,
        model: &str,
        rule: &TriggerRule,
        now_ms: i64,
    ) -> Result<Option<TriggerRun>, TriggerError> {
        let window_ms = rule.window_seconds as i64 * 1000;
        let last_complete = (now_ms - rule.settle_ms()).div_euclid(window_ms) * window_ms;
        // Progress made under another rule (changed since) does not count.
        let mut progress = lock(&self.progress)
            .get(model)
            .filter(|p| p.rule.as_ref() == Some(rule))
            .cloned()
            .unwrap_or_else(|| RuleProgress {
                rule: Some(rule.clone()),
                ..RuleProgress::default()
            });
        let first = progress
            .evaluated_until_ms
            .unwrap_or(last_complete - window_ms)
            .max(last_complete - MAX_CATCH_UP * window_ms);
        let Some(version) = self.watched_version(model, rule)? else {
            return Ok(None);
        };
        let mut fired = None;
        let mut until = first + window_ms;
        while until <= last_complete {
            let observation = self.observe(model, version, until - window_ms, until)?;
            tracing::debug!(%model, ?observation, "trigger window");
            let (next, reason) = decide::observe(rule, &progress.streaks, observation);
            progress.streaks = next;
            progress.evaluated_until_ms = Some(until);
            if let Some(reason) = reason {
                let evidence = progress.streaks.evidence(reason).to_vec();
                let span = (
                    evidence.first().map_or(until - window_ms, |o| o.since_ms),
                    until,
                );
                match self.start_run(
                    model,
                    rule,
                    reason,
                    Some(version),
                    &evidence,
                    span,
                    None,
                    "trigger",
                ) {
                    Ok(run) => fired = Some(run),
                    Err(TriggerError::Suppressed(why)) => {
                        tracing::info!(%model, reason = reason.as_str(), %why, "trigger condition held; not fired")
                    }
                    Err(error) => return Err(error),
                }
                progress.streaks = decide::after_firing(&progress.streaks);
            }
            until += window_ms;
        }
        lock(&self.progress).insert(model.to_owned(), progress);
        Ok(fired)
    }

    /// One window of the watched version: each device's own windows merged and judged
    /// against the version's reference.
    fn observe(
        &self,
        model: &str,
        version: u64,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Observation, TriggerError> {
        let slices = self
            .telemetry
            .slices_by_device(model, version, since_ms, until_ms)?;
        let mut observation = Observation {
            version,
            since_ms,
            until_ms,
            reporting_devices: slices.len() as u64,
            ..Observation::default()
        };
        for slice in slices.values() {
            observation.requests += slice.requests;
            observation.errors += slice.error_count();
        }
        match self.telemetry.reference(model, version)? {
            None => {
                observation.drift_note = Some(format!(
                    "version {version} has no reference profile: drift is not judged"
                ))
            }
            Some((_, reference)) => {
                let thresholds = self.telemetry.thresholds(model)?;
                for slice in slices.values() {
                    match compare(&reference, &slice.features, &thresholds).dataset_drift {
                        Some(true) => {
                            observation.judged_devices += 1;
                            observation.drifting_devices += 1;
                        }
                        Some(false) => observation.judged_devices += 1,
                        None => {}
                    }
                }
            }
        }
        Ok(observation)
    }

    /// Checks cooldown and de-duplication, records the run with its payload, and starts
    /// carrying out the action in the background.
    #[allow(clippy::too_many_arguments)]
    fn start_run(
        self: &Arc<Self>,
        model: &str,
        rule: &TriggerRule,
        reason: Reason,
        version: Option<u64>,
        evidence: &[Observation],
        span: (i64, i64),
        note: Option<String>,
        actor: &str,
    ) -> Result<TriggerRun, TriggerError> {
        let _starting = lock(&self.starting);
        let now = self.registry.now();
        decide::may_fire(rule, reason, self.history(model)?, now)
            .map_err(TriggerError::Suppressed)?;
        let id = new_run_id();
        let payload = self.payload(&id, model, rule, reason, version, evidence, span, note, now);
        let record = TriggerRunRecord {
            id: id.clone(),
            model: model.to_owned(),
            version,
            reason: reason.as_str().to_owned(),
            status: "pending".into(),
            attempts: 0,
            fired_at: now,
            updated: now,
            outcome: String::new(),
            payload: serde_json::to_string(&payload).expect("payloads serialize"),
        };
        let store = self.registry.store();
        store.insert_trigger_run(&record)?;
        // From here the run exists: it is carried out whatever happens to the records below
        // (a run left pending would block the model's triggers until a restart).
        if let Err(error) = store.audit(
            now,
            actor,
            TRIGGER_FIRED,
            &format!(
                "{model} version {version:?}: {} (run {id})",
                reason.as_str()
            ),
        ) {
            tracing::error!(run = %id, %error, "cannot audit a trigger run");
        }
        if let Err(error) = self.telemetry.store.add_event(
            now,
            TRIGGER_FIRED,
            model,
            version,
            &serde_json::json!({"run": id, "reason": reason.as_str(), "evidence": evidence}),
        ) {
            tracing::error!(run = %id, %error, "cannot record a trigger event");
        }
        tracing::warn!(%model, ?version, reason = reason.as_str(), run = %id, "retraining trigger fired");
        let triggers = self.clone();
        let action = rule.action.clone();
        let run_id = id.clone();
        let body = Bytes::from(serde_json::to_vec(&payload).expect("payloads serialize"));
        let model_name = model.to_owned();
        // Runs on the hub's runtime; called from its blocking pool.
        tokio::runtime::Handle::current().spawn(async move {
            triggers
                .carry_out(run_id, model_name, version, reason, action, body)
                .await;
        });
        Ok(run_view(record)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn payload(
        &self,
        id: &str,
        model: &str,
        rule: &TriggerRule,
        reason: Reason,
        version: Option<u64>,
        evidence: &[Observation],
        (since_ms, until_ms): (i64, i64),
        note: Option<String>,
        now: i64,
    ) -> TriggerPayload {
        let mut payload = TriggerPayload {
            id: id.to_owned(),
            event: "retraining-trigger".into(),
            model: model.to_owned(),
            version,
            alias: rule.alias.clone(),
            reason,
            note,
            fired_at: now,
            evidence: evidence.to_vec(),
            hub: self.hub_url.clone(),
            health: None,
            drift_report: None,
            captured_data: None,
        };
        let Some(version) = version else {
            return payload;
        };
        let query = SliceQuery {
            model: model.to_owned(),
            version: Some(version),
            since_ms: Some(since_ms),
            until_ms: Some(until_ms),
            ..SliceQuery::default()
        };
        // The report is what the receiver reads first; a failure to make it is said, not
        // fatal to the trigger.
        match self.telemetry.slice(&query) {
            Ok(slice) => {
                payload.health = Some(ReportOrError::Report(slice.health()));
                payload.drift_report = Some(
                    match self
                        .telemetry
                        .compare_slice(&query, &slice, &Against::Reference)
                    {
                        Ok(report) => ReportOrError::Report(report),
                        Err(e) => ReportOrError::Error {
                            error: e.to_string(),
                        },
                    },
                );
            }
            Err(e) => {
                payload.health = Some(ReportOrError::Error {
                    error: e.to_string(),
                })
            }
        }
        let base = format!("{}/api/v1/models/{model}", self.hub_url);
        payload.captured_data = Some(CapturedDataLinks {
            captures_csv: format!("{base}/versions/{version}/captures?format=csv"),
            captures_ndjson: format!("{base}/versions/{version}/captures"),
            drift_report: format!(
                "{base}/drift?version={version}&since_ms={since_ms}&until_ms={until_ms}"
            ),
            health: format!("{base}/health?since_ms={since_ms}&until_ms={until_ms}"),
            reference: format!("{base}/versions/{version}/reference"),
            auth: "Authorization: Bearer TOKEN (a read token suffices)".into(),
        });
        payload
    }

    /// Attempts the action until it succeeds, gives up, or runs out of attempts, recording
    /// each attempt on the run.
    async fn carry_out(
        self: Arc<Self>,
        run_id: String,
        model: String,
        version: Option<u64>,
        reason: Reason,
        action: rule::Action,
        body: Bytes,
    ) {
        let (max_attempts, backoff) = match (&action.webhook, &action.command) {
            (Some(w), _) => (w.max_attempts, w.backoff_seconds),
            (_, Some(c)) => (c.max_attempts, c.backoff_seconds),
            _ => (1, 1.0),
        };
        let trigger_file = self.work_dir.join(format!("{run_id}.json"));
        if action.command.is_some() {
            let written = tokio::fs::create_dir_all(&self.work_dir)
                .await
                .and(tokio::fs::write(&trigger_file, &body).await);
            if let Err(e) = written {
                let outcome = format!("cannot write {}: {e}", trigger_file.display());
                self.finish(&run_id, &model, version, "failed", 0, outcome)
                    .await;
                return;
            }
        }
        let mut env: Vec<(&str, String)> = vec![
            ("FLOTILLA_TRIGGER_ID", run_id.clone()),
            ("FLOTILLA_MODEL", model.clone()),
            (
                "FLOTILLA_VERSION",
                version.map(|v| v.to_string()).unwrap_or_default(),
            ),
            ("FLOTILLA_REASON", reason.as_str().to_owned()),
            ("FLOTILLA_HUB_URL", self.hub_url.clone()),
        ];
        if let Some(ca_file) = &self.ca_file {
            env.push(("FLOTILLA_CA_FILE", ca_file.display().to_string()));
        }
        let policy = RetryPolicy {
            base: Duration::from_secs_f64(backoff),
            max: Duration::from_secs_f64(rule::MAX_BACKOFF_SECONDS),
            attempts: Some(max_attempts.max(1)),
        };
        // Each attempt that will be followed by another is recorded as `retrying` before
        // the wait, so the run's status says so while it waits.
        let attempts_made = std::sync::atomic::AtomicU32::new(0);
        let result = retry(
            &policy,
            |number| {
                let (action, trigger_file, env, body, run_id) =
                    (&action, &trigger_file, &env, &body, &run_id);
                let attempts_made = &attempts_made;
                let this = &self;
                async move {
                    let attempt = number + 1;
                    attempts_made.store(attempt, std::sync::atomic::Ordering::SeqCst);
                    let outcome = match (&action.webhook, &action.command) {
                        (Some(webhook), _) => {
                            let timestamp = this.registry.now();
                            deliver::call_webhook(webhook, run_id, body, timestamp).await
                        }
                        // A rule stored before the hub was restarted without commands allowed.
                        (_, Some(_)) if !this.allow_commands => {
                            Attempt::GiveUp(TriggerError::CommandsNotAllowed.to_string())
                        }
                        (_, Some(command)) => {
                            deliver::run_command(command, trigger_file, env).await
                        }
                        _ => Attempt::GiveUp("the rule has no action".into()),
                    };
                    match outcome {
                        Attempt::Succeeded(said) => Ok(said),
                        Attempt::Retry(said) if policy.allows_another_attempt(attempt) => {
                            tracing::warn!(run = %run_id, attempt, %said, "trigger attempt failed; retrying");
                            this.record(run_id, "retrying", attempt, said.clone()).await;
                            Err(Attempt::Retry(said))
                        }
                        failed => Err(failed),
                    }
                }
            },
            |failed, _| match failed {
                Attempt::Retry(_) => RetryDecision::Retry,
                _ => RetryDecision::Stop,
            },
        )
        .await;
        let attempts = attempts_made.load(std::sync::atomic::Ordering::SeqCst);
        let (status, outcome) = match result {
            Ok(said) => ("succeeded", said),
            Err(Attempt::Retry(said)) => (
                "failed",
                format!("{said} (attempt {attempts} of {max_attempts}; no attempts left)"),
            ),
            Err(Attempt::GiveUp(said) | Attempt::Succeeded(said)) => ("failed", said),
        };
        self.finish(&run_id, &model, version, status, attempts, outcome)
            .await;
    }

    async fn record(&self, run_id: &str, status: &str, attempts: u32, outcome: String) {
        let store = self.registry.store().clone();
        let now = self.registry.now();
        let (id, status) = (run_id.to_owned(), status.to_owned());
        let saved = tokio::task::spawn_blocking(move || {
            store.update_trigger_run(&id, &status, attempts, &outcome, now)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(run = %run_id, %error, "cannot record a trigger attempt")
            }
            Err(error) => {
                tracing::error!(run = %run_id, %error, "recording a trigger attempt failed")
            }
        }
    }

    async fn finish(
        &self,
        run_id: &str,
        model: &str,
        version: Option<u64>,
        status: &str,
        attempts: u32,
        outcome: String,
    ) {
        self.record(run_id, status, attempts, outcome.clone()).await;
        let kind = if status == "succeeded" {
            TRIGGER_SUCCEEDED
        } else {
            TRIGGER_FAILED
        };
        if status == "succeeded" {
            tracing::info!(run = %run_id, attempts, "trigger run succeeded");
        } else {
            tracing::error!(run = %run_id, attempts, %outcome, "trigger run failed");
        }
        let store = self.telemetry.store.clone();
        let now = self.registry.now();
        let (model, detail) = (
            model.to_owned(),
            serde_json::json!({"run": run_id, "attempts": attempts, "outcome": outcome}),
        );
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(error) = store.add_event(now, kind, &model, version, &detail) {
                tracing::error!(%error, "cannot record a trigger event");
            }
        })
        .await;
    }

    /// Evaluates every `tick` on the blocking pool.
    pub fn spawn(self: Arc<Self>, tick: Duration) -> tokio::task::JoinHandle<()> {
        crate::periodic::spawn_periodic_blocking("trigger evaluation", tick, move || {
            self.evaluate(self.registry.now_ms()).map(|_| ())
        })
    }
}
