//! What the agent does to match its desired state, as pure decisions (docs/ARCHITECTURE.md),
//! so each rule is tested without a hub, a disk or a clock: which desired state to follow
//! and when to refresh the trusted root first, which models need an install, whether a
//! manifest may be installed (an older version only as a named rollback target), the
//! order of an install's steps, whether a download is needed at all, what is undone after a
//! failed step, and which version folders stay on disk after a switch. `sync/` carries the
//! decisions out.

use std::collections::BTreeMap;

use flotilla_common::trust::{TrustError, TrustedVersion, verify_manifest};
use flotilla_proto::control::DesiredModel;
use flotilla_proto::trust::{ModelManifest, RootMetadata};

use crate::sync::DesiredStateError;

/// What to do with a desired state that passed its checks, given its sequence and the
/// newest sequence this device followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceDecision {
    /// Newer, or the one already followed delivered again (the broker redelivers the
    /// retained desired state after every reconnect and restart): follow it; entries not
    /// served at their desired version are installed, so a failed install is attempted again.
    Follow,
    /// Older than one already followed (a delayed or replayed message): ignore it.
    IgnoreOlder,
}

/// Where a desired state stands among the ones a device may follow: by the root metadata
/// version that signed it, then its sequence. A rotation of the signing key raises the root
/// version, so the hub's first desired state after it outranks any sequence a leaked key
/// forged before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct DesiredOrder {
    pub root_version: u64,
    pub sequence: u64,
}

/// Follow unless older: the order only grows, so an older one is stale.
pub fn sequence_decision(offered: DesiredOrder, followed: DesiredOrder) -> SequenceDecision {
    if offered < followed {
        SequenceDecision::IgnoreOlder
    } else {
        SequenceDecision::Follow
    }
}

/// Whether a refused desired state calls for fetching newer root metadata and checking it
/// once more: a signature failure (the hub may have rotated its signing keys to ones the
/// trusted root does not name yet) or a state naming a newer root does. Every other refusal
/// would repeat.
pub fn refresh_root_after_refusal(refusal: &DesiredStateError) -> bool {
    matches!(
        refusal,
        DesiredStateError::Signature(_) | DesiredStateError::RootAhead { .. }
    )
}

/// The desired entries the agent does not serve yet at the desired version. Nothing else
/// gates a retry: a model that failed at a version is attempted again each time a desired
/// state naming it is followed (a new sequence, or the same one delivered again; see
/// `SequenceDecision::Follow`), never on a timer.
pub fn installs_needed<'a>(
    desired: &'a [DesiredModel],
    serving: &BTreeMap<String, u64>,
) -> Vec<&'a DesiredModel> {
    desired
        .iter()
        .filter(|m| serving.get(&m.name) != Some(&m.version))
        .collect()
}

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

    /// The step's name in reports to the hub.
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

/// Why an install step failed. The text is the reason the report to the hub carries (the
/// hub's inventory shows it and fleet-sim groups failures by its first words), so each
/// variant keeps the wording it has always had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstallError {
    /// The agent's state database could not be read.
    #[error("{0}")]
    AgentState(String),
    /// The manifest is not trusted: signature, expiry, rollback or replay.
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    #[error(
        "manifest is for {manifest_model} version {manifest_version}, desired state says {desired_model} version {desired_version}"
    )]
    ManifestMismatch {
        manifest_model: String,
        manifest_version: u64,
        desired_model: String,
        desired_version: u64,
    },
    #[error("cannot create {folder}: {reason}")]
    DownloadFolder { folder: String, reason: String },
    /// Neither QUIC nor HTTP delivered the artifact.
    #[error("{0}")]
    Download(String),
    #[error("cannot read the download: {0}")]
    UnreadableDownload(String),
    #[error(
        "artifact does not match its signed manifest (sha256 {sha256}, {size} bytes; manifest says {manifest_sha256}, {manifest_size} bytes): tampered or corrupted, discarded"
    )]
    ArtifactMismatch {
        sha256: String,
        size: u64,
        manifest_sha256: String,
        manifest_size: u64,
    },
    #[error("cannot install the artifact: {0}")]
    Placement(String),
    #[error("cannot write the feature map: {0}")]
    FeatureMap(String),
    /// A fault a simulator injected could not be applied.
    #[error("injected fault: {0}")]
    InjectedFault(String),
    /// ONNX Runtime could not load the version.
    #[error("{0}")]
    Load(String),
    /// The loaded version failed its run on a schema-derived input.
    #[error("{0}")]
    SmokeTest(String),
    /// The version could not be made the default.
    #[error("{0}")]
    Switch(String),
}

/// Where an install goes after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Next(Step),
    Installed,
    Failed { step: Step, error: InstallError },
}

/// The install state machine: the step that follows `step` given how it went.
pub fn after(step: Step, outcome: Result<(), InstallError>) -> Progress {
    if let Err(error) = outcome {
        return Progress::Failed { step, error };
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

/// The manifest a desired entry may be installed under: signed by the trusted root's keys,
/// unexpired at `now`, for the model and version the entry names, and not older than the
/// newest version trusted for the model (`trusted`) unless the signed desired state names
/// the entry as a rollback target (nor an older signed copy of the same version).
pub fn check_manifest(
    root: &RootMetadata,
    entry: &DesiredModel,
    now: i64,
    trusted: Option<TrustedVersion>,
) -> Result<ModelManifest, InstallError> {
    let manifest = verify_manifest(root, &entry.manifest, now, trusted, entry.rollback)?;
    if manifest.model != entry.name || manifest.version != entry.version {
        return Err(InstallError::ManifestMismatch {
            manifest_model: manifest.model,
            manifest_version: manifest.version,
            desired_model: entry.name.clone(),
            desired_version: entry.version,
        });
    }
    Ok(manifest)
}

/// Where the artifact of a verified manifest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactSource {
    /// The version folder already holds a file with the manifest's hash (a rollback to the
    /// kept previous version, or an install interrupted after placing): nothing to fetch.
    AlreadyInstalled,
    /// Fetch it (resuming what the downloads folder holds), then check it.
    Download,
}

/// `installed_sha256`: the hash of the file in the version's folder, if there is one.
pub fn artifact_source(installed_sha256: Option<&str>, manifest: &ModelManifest) -> ArtifactSource {
    if installed_sha256 == Some(manifest.artifact_sha256.as_str()) {
        ArtifactSource::AlreadyInstalled
    } else {
        ArtifactSource::Download
    }
}

/// A download may be placed where models are loaded only with exactly the manifest's size
/// and SHA-256.
pub fn check_download(
    sha256: &str,
    size: u64,
    manifest: &ModelManifest,
) -> Result<(), InstallError> {
    if size == manifest.artifact_size && sha256 == manifest.artifact_sha256 {
        return Ok(());
    }
    Err(InstallError::ArtifactMismatch {
        sha256: sha256.to_owned(),
        size,
        manifest_sha256: manifest.artifact_sha256.clone(),
        manifest_size: manifest.artifact_size,
    })
}

/// What is undone after a failed step. The running version is never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCleanUp {
    /// Nothing: a partial download stays to be resumed by the next attempt, and nothing
    /// unverified reached the models folder.
    Nothing,
    /// The download does not match its manifest: delete it, so the next attempt fetches
    /// it afresh instead of resuming damaged bytes.
    DiscardDownload,
    /// The version folder failed to load or to run: delete it and reload the model, so a
    /// version that failed its checks can never be served.
    RemoveVersion,
}

pub fn clean_up_after_failure(step: Step, error: &InstallError) -> FailureCleanUp {
    match (step, error) {
        (_, InstallError::ArtifactMismatch { .. }) => FailureCleanUp::DiscardDownload,
        (Step::Load | Step::SmokeTest, _) => FailureCleanUp::RemoveVersion,
        _ => FailureCleanUp::Nothing,
    }
}

/// The entries of a model's folder to delete once `installed` serves: everything but the
/// new version and the one it replaced, which stays for an instant rollback (older
/// versions, leftovers of failed installs, unfinished staging folders).
pub fn folders_to_remove_after_install(
    folder_names: &[String],
    installed: u64,
    replaced: Option<u64>,
) -> Vec<&str> {
    folder_names
        .iter()
        .filter(|name| {
            let kept = name
                .parse::<u64>()
                .is_ok_and(|version| version == installed || Some(version) == replaced);
            !kept
        })
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use flotilla_common::signing::{SigningError, SigningKey, sign_envelope};
    use flotilla_proto::trust::{Envelope, MANIFEST_PAYLOAD_TYPE};
    use proptest::prelude::*;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const ALL_STEPS: [Step; 6] = [
        Step::VerifyManifest,
        Step::Download,
        Step::CheckArtifact,
        Step::Load,
        Step::SmokeTest,
        Step::Switch,
    ];

    fn unsigned_entry(name: &str, version: u64) -> DesiredModel {
        DesiredModel {
            name: name.into(),
            version,
            manifest: Envelope {
                payload_type: String::new(),
                payload: String::new(),
                signatures: vec![],
            },
            rollback: false,
        }
    }

    fn manifest(model: &str, version: u64, document_version: u64) -> ModelManifest {
        ModelManifest {
            model: model.into(),
            version,
            document_version,
            artifact_sha256: "ab".repeat(32),
            artifact_size: 1234,
            inputs: vec![],
            outputs: vec![],
            created: NOW - 10,
            expires: NOW + 3600,
            annotations: BTreeMap::new(),
            features: None,
        }
    }

    struct Hub {
        signing: SigningKey,
        root: RootMetadata,
    }

    fn hub() -> Hub {
        let signing = SigningKey::generate().unwrap();
        let root = RootMetadata {
            version: 1,
            expires: NOW + 86_400,
            root_keys: vec![SigningKey::generate().unwrap().public_key()],
            root_threshold: 1,
            signing_keys: vec![signing.public_key()],
            signing_threshold: 1,
        };
        Hub { signing, root }
    }

    fn signed_entry(
        hub: &Hub,
        name: &str,
        manifest: &ModelManifest,
        rollback: bool,
    ) -> DesiredModel {
        DesiredModel {
            name: name.into(),
            version: manifest.version,
            manifest: sign_envelope(
                MANIFEST_PAYLOAD_TYPE,
                serde_json::to_string(manifest).unwrap(),
                &[&hub.signing],
            ),
            rollback,
        }
    }

    #[test]
    fn a_desired_state_is_followed_unless_older_than_the_one_followed() {
        let at = |root_version, sequence| DesiredOrder {
            root_version,
            sequence,
        };
        assert_eq!(
            sequence_decision(at(1, 5), at(1, 4)),
            SequenceDecision::Follow
        );
        assert_eq!(
            sequence_decision(at(1, 4), at(1, 4)),
            SequenceDecision::Follow,
            "a redelivery is followed again"
        );
        assert_eq!(
            sequence_decision(at(1, 3), at(1, 4)),
            SequenceDecision::IgnoreOlder
        );
        assert_eq!(
            sequence_decision(at(0, 0), at(0, 0)),
            SequenceDecision::Follow
        );
        // A leaked key forged sequence 10^12 under root 1; the hub rotated to root 2 and
        // goes on from its own sequence 9.
        assert_eq!(
            sequence_decision(at(2, 9), at(1, 1_000_000_000_000)),
            SequenceDecision::Follow
        );
        assert_eq!(
            sequence_decision(at(1, 1_000_000_000_001), at(2, 9)),
            SequenceDecision::IgnoreOlder
        );
    }

    #[test]
    fn only_a_signature_failure_refreshes_the_root() {
        let threshold = SigningError::Threshold {
            valid: 0,
            threshold: 1,
        };
        assert!(refresh_root_after_refusal(&DesiredStateError::Signature(
            threshold
        )));
        for refusal in [
            DesiredStateError::NotEnvelope("eof".into()),
            DesiredStateError::Payload("eof".into()),
            DesiredStateError::WrongDevice {
                addressed_to: "a".into(),
                this_device: "b".into(),
            },
            DesiredStateError::Expired {
                expires: 1,
                root_expires: 2,
            },
            DesiredStateError::AgentState("locked".into()),
        ] {
            assert!(!refresh_root_after_refusal(&refusal), "{refusal}");
        }
    }

    #[test]
    fn only_models_not_served_at_the_desired_version_need_installs() {
        let desired = vec![
            unsigned_entry("a", 2),
            unsigned_entry("b", 1),
            unsigned_entry("c", 1),
        ];
        let serving = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        let names: Vec<(&str, u64)> = installs_needed(&desired, &serving)
            .iter()
            .map(|m| (m.name.as_str(), m.version))
            .collect();
        assert_eq!(names, [("a", 2), ("c", 1)]);
    }

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
        assert_eq!(seen, ALL_STEPS);
        for step in seen {
            let error = InstallError::Download("boom".into());
            assert_eq!(
                after(step, Err(error.clone())),
                Progress::Failed { step, error }
            );
        }
    }

    proptest! {
        /// Whatever each step's outcome, the steps run in their order, the first failure
        /// ends the install at that step, and only six successes install.
        #[test]
        fn the_install_machine_stops_at_the_first_failure(failures in proptest::collection::vec(any::<bool>(), 6)) {
            let mut step = Step::FIRST;
            let mut visited = Vec::new();
            let end = loop {
                visited.push(step);
                let index = ALL_STEPS.iter().position(|s| *s == step).unwrap();
                let outcome = if failures[index] {
                    Err(InstallError::Load(format!("step {index}")))
                } else {
                    Ok(())
                };
                match after(step, outcome) {
                    Progress::Next(next) => step = next,
                    end => break end,
                }
            };
            let first_failure = failures.iter().position(|f| *f);
            match first_failure {
                None => {
                    prop_assert_eq!(end, Progress::Installed);
                    prop_assert_eq!(visited.as_slice(), ALL_STEPS.as_slice());
                }
                Some(index) => {
                    prop_assert_eq!(&visited[..], &ALL_STEPS[..=index]);
                    prop_assert_eq!(end, Progress::Failed {
                        step: ALL_STEPS[index],
                        error: InstallError::Load(format!("step {index}")),
                    });
                }
            }
        }
    }

    #[test]
    fn a_manifest_signed_for_the_entry_is_accepted() {
        let hub = hub();
        let entry = signed_entry(&hub, "iris", &manifest("iris", 2, 1), false);
        let trusted = Some(TrustedVersion {
            version: 1,
            document_version: 1,
        });
        assert_eq!(
            check_manifest(&hub.root, &entry, NOW, trusted),
            Ok(manifest("iris", 2, 1))
        );
    }

    #[test]
    fn an_older_version_is_installed_only_as_a_named_rollback_target() {
        let hub = hub();
        let trusted = Some(TrustedVersion {
            version: 3,
            document_version: 1,
        });
        let older = manifest("iris", 2, 1);
        let refused = check_manifest(
            &hub.root,
            &signed_entry(&hub, "iris", &older, false),
            NOW,
            trusted,
        );
        assert!(
            matches!(
                refused,
                Err(InstallError::Untrusted(TrustError::Rollback {
                    offered: 2,
                    trusted: 3,
                    ..
                }))
            ),
            "{refused:?}"
        );
        assert_eq!(
            check_manifest(
                &hub.root,
                &signed_entry(&hub, "iris", &older, true),
                NOW,
                trusted
            ),
            Ok(older)
        );
    }

    #[test]
    fn a_manifest_for_another_model_or_version_is_refused() {
        let hub = hub();
        let mut entry = signed_entry(&hub, "iris", &manifest("iris", 2, 1), false);
        entry.name = "scaler".into();
        let error = check_manifest(&hub.root, &entry, NOW, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "manifest is for iris version 2, desired state says scaler version 2"
        );
        let mut entry = signed_entry(&hub, "iris", &manifest("iris", 2, 1), false);
        entry.version = 3;
        assert!(matches!(
            check_manifest(&hub.root, &entry, NOW, None),
            Err(InstallError::ManifestMismatch {
                manifest_version: 2,
                desired_version: 3,
                ..
            })
        ));
    }

    #[test]
    fn an_unsigned_or_expired_manifest_is_refused() {
        let hub = hub();
        let forged = SigningKey::generate().unwrap();
        let mut entry = signed_entry(&hub, "iris", &manifest("iris", 2, 1), false);
        entry.manifest = sign_envelope(
            MANIFEST_PAYLOAD_TYPE,
            serde_json::to_string(&manifest("iris", 2, 1)).unwrap(),
            &[&forged],
        );
        assert!(matches!(
            check_manifest(&hub.root, &entry, NOW, None),
            Err(InstallError::Untrusted(TrustError::Signature { .. }))
        ));
        let entry = signed_entry(&hub, "iris", &manifest("iris", 2, 1), false);
        assert!(matches!(
            check_manifest(&hub.root, &entry, NOW + 7200, None),
            Err(InstallError::Untrusted(TrustError::Expired { .. }))
        ));
    }

    #[test]
    fn a_file_already_installed_with_the_manifests_hash_is_not_downloaded() {
        let m = manifest("iris", 2, 1);
        assert_eq!(
            artifact_source(Some(&"ab".repeat(32)), &m),
            ArtifactSource::AlreadyInstalled
        );
        assert_eq!(
            artifact_source(Some(&"cd".repeat(32)), &m),
            ArtifactSource::Download
        );
        assert_eq!(artifact_source(None, &m), ArtifactSource::Download);
    }

    #[test]
    fn a_download_must_match_the_manifest_in_size_and_hash() {
        let m = manifest("iris", 2, 1);
        assert_eq!(check_download(&"ab".repeat(32), 1234, &m), Ok(()));
        let wrong_size = check_download(&"ab".repeat(32), 1233, &m).unwrap_err();
        assert!(
            wrong_size
                .to_string()
                .contains("does not match its signed manifest"),
            "{wrong_size}"
        );
        let wrong_hash = check_download(&"cd".repeat(32), 1234, &m).unwrap_err();
        assert_eq!(
            wrong_hash.to_string(),
            format!(
                "artifact does not match its signed manifest (sha256 {}, 1234 bytes; manifest says {}, 1234 bytes): tampered or corrupted, discarded",
                "cd".repeat(32),
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn a_failed_version_is_removed_and_a_damaged_download_discarded() {
        let mismatch = check_download("00", 1, &manifest("iris", 2, 1)).unwrap_err();
        assert_eq!(
            clean_up_after_failure(Step::CheckArtifact, &mismatch),
            FailureCleanUp::DiscardDownload
        );
        for step in [Step::Load, Step::SmokeTest] {
            assert_eq!(
                clean_up_after_failure(step, &InstallError::Load("cannot load".into())),
                FailureCleanUp::RemoveVersion
            );
        }
        for (step, error) in [
            (
                Step::VerifyManifest,
                InstallError::AgentState("locked".into()),
            ),
            (Step::Download, InstallError::Download("cut".into())),
            (
                Step::CheckArtifact,
                InstallError::UnreadableDownload("gone".into()),
            ),
            (Step::CheckArtifact, InstallError::Placement("full".into())),
            (Step::Switch, InstallError::Switch("gone".into())),
        ] {
            assert_eq!(
                clean_up_after_failure(step, &error),
                FailureCleanUp::Nothing,
                "{step:?}: {error}"
            );
        }
    }

    #[test]
    fn a_switch_keeps_the_new_version_and_the_one_it_replaced() {
        let names: Vec<String> = ["1", "2", "3", "4", ".staging-x1", "notes"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            folders_to_remove_after_install(&names, 3, Some(2)),
            ["1", "4", ".staging-x1", "notes"]
        );
        assert_eq!(
            folders_to_remove_after_install(&names, 1, None),
            ["2", "3", "4", ".staging-x1", "notes"],
            "a first install keeps only itself"
        );
        assert_eq!(
            folders_to_remove_after_install(&names, 2, Some(4)),
            ["1", "3", ".staging-x1", "notes"],
            "a rollback keeps the version it left"
        );
    }

    proptest! {
        /// Exactly the new and the replaced version survive a switch, whatever else the
        /// folder holds.
        #[test]
        fn only_the_new_and_replaced_versions_survive(
            versions in proptest::collection::btree_set(0u64..20, 0..10),
            installed in 0u64..20,
            replaced in proptest::option::of(0u64..20),
        ) {
            let mut names: Vec<String> = versions.iter().map(u64::to_string).collect();
            names.push(".staging-abc".into());
            let removed = folders_to_remove_after_install(&names, installed, replaced);
            for name in &names {
                let keep = *name == installed.to_string()
                    || replaced.is_some_and(|r| *name == r.to_string());
                prop_assert_eq!(removed.contains(&name.as_str()), !keep, "{}", name);
            }
        }
    }
}
