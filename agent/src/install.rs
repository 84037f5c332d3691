//! What the agent does to match its desired state, as pure decisions (DESIGN.md section 2):
//! which models need an install, and the order of an install's steps, where any failure
//! stops the install, keeps the running version and is reported with its step and reason.

use std::collections::BTreeMap;

use flotilla_proto::control::DesiredModel;

/// The steps of one install, in order. The manifest is verified before a byte is
/// downloaded, and the artifact is checked before it is written where models are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Signature, expiry and the rollback rule of the manifest.
    VerifyManifest,
    /// Fetch the artifact (resuming a partial download).
    Download,
    /// Size and SHA-256 against the manifest, then move into place.
    CheckArtifact,
    /// Load in ONNX Runtime beside the running version.
    Load,
    /// Run once on an input derived from the schema.
    SmokeTest,
    /// Make it the default, atomically; keep the previous version for rollback.
    Switch,
}

impl Step {
    pub const FIRST: Step = Step::VerifyManifest;

    pub fn name(self) -> &'static str {
        match self {
            Step::VerifyManifest => "verify_manifest",
            Step::Download => "download",
            Step::CheckArtifact => "check_artifact",
            Step::Load => "load",
            Step::SmokeTest => "smoke_test",
            Step::Switch => "switch",
        }
    }
}

/// Where an install goes after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Next(Step),
    Installed,
    Failed { step: Step, reason: String },
}

/// The install state machine: the step that follows `step` given how it went.
pub fn after(step: Step, outcome: Result<(), String>) -> Progress {
    if let Err(reason) = outcome {
        return Progress::Failed { step, reason };
    }
    match step {
        Step::VerifyManifest => Progress::Next(Step::Download),
        Step::Download => Progress::Next(Step::CheckArtifact),
        Step::CheckArtifact => Progress::Next(Step::Load),
        Step::Load => Progress::Next(Step::SmokeTest),
        Step::SmokeTest => Progress::Next(Step::Switch),
        Step::Switch => Progress::Installed,
    }
}

/// The desired entries the agent does not serve yet at the desired version. A model that
/// failed at a version is retried only when the desired state changes (a new sequence).
pub fn installs_needed<'a>(
    desired: &'a [DesiredModel],
    serving: &BTreeMap<String, u64>,
) -> Vec<&'a DesiredModel> {
    desired
        .iter()
        .filter(|m| serving.get(&m.name) != Some(&m.version))
        .collect()
}

#[cfg(test)]
mod tests {
    use flotilla_proto::trust::Envelope;

    use super::*;

    #[test]
    fn steps_run_in_order_and_any_failure_stops_the_install() {
        let mut step = Step::FIRST;
        let mut seen = vec![step];
        loop {
            match after(step, Ok(())) {
                Progress::Next(next) => {
                    seen.push(next);
                    step = next;
                }
                Progress::Installed => break,
                Progress::Failed { .. } => unreachable!(),
            }
        }
        assert_eq!(
            seen,
            [
                Step::VerifyManifest,
                Step::Download,
                Step::CheckArtifact,
                Step::Load,
                Step::SmokeTest,
                Step::Switch
            ]
        );
        for step in seen {
            assert_eq!(
                after(step, Err("boom".into())),
                Progress::Failed {
                    step,
                    reason: "boom".into()
                }
            );
        }
    }

    #[test]
    fn only_models_not_served_at_the_desired_version_need_installs() {
        let entry = |name: &str, version| DesiredModel {
            name: name.into(),
            version,
            manifest: Envelope {
                payload_type: String::new(),
                payload: String::new(),
                signatures: vec![],
            },
            rollback: false,
        };
        let desired = vec![entry("a", 2), entry("b", 1), entry("c", 1)];
        let serving = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        let names: Vec<(&str, u64)> = installs_needed(&desired, &serving)
            .iter()
            .map(|m| (m.name.as_str(), m.version))
            .collect();
        assert_eq!(names, [("a", 2), ("c", 1)]);
    }
}
