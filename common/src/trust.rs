//! Trust decisions, pure (docs/trust.md): whether a new root may replace the trusted
//! one, and whether a model manifest may be installed. Inputs are the documents, what is
//! already trusted and `now`; nothing here persists anything, so callers check first and
//! store only what passed (the `tough` advisories' mistake was the other order).

use flotilla_proto::trust::{
    Envelope, MANIFEST_PAYLOAD_TYPE, ModelManifest, ROOT_PAYLOAD_TYPE, RootMetadata,
};

use crate::signing::{SigningError, verify_envelope};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum TrustError {
    #[error("{document} signature check failed: {source}")]
    Signature {
        document: &'static str,
        source: SigningError,
    },
    #[error("{document} is not valid: {message}")]
    Malformed {
        document: &'static str,
        message: String,
    },
    #[error("{document} expired at {expires} (now {now}); the hub must re-sign it")]
    Expired {
        document: &'static str,
        expires: i64,
        now: i64,
    },
    #[error(
        "root version {offered} cannot follow trusted root version {trusted}: roots rotate one version at a time"
    )]
    RootVersion { trusted: u64, offered: u64 },
    #[error(
        "model {model} version {offered} is older than trusted version {trusted} and the desired state does not name it as a rollback target"
    )]
    Rollback {
        model: String,
        offered: u64,
        trusted: u64,
    },
    #[error(
        "model {model} version {version}: manifest document {offered} is older than the trusted document {trusted} (replayed manifest)"
    )]
    Replay {
        model: String,
        version: u64,
        offered: u64,
        trusted: u64,
    },
    #[error("root metadata {0}")]
    BadRoot(String),
}

/// The newest manifest a device trusts for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedVersion {
    pub version: u64,
    pub document_version: u64,
}

fn parse<T: serde::de::DeserializeOwned>(
    document: &'static str,
    envelope: &Envelope,
) -> Result<T, TrustError> {
    serde_json::from_str(&envelope.payload).map_err(|e| TrustError::Malformed {
        document,
        message: e.to_string(),
    })
}

fn check_root_shape(root: &RootMetadata) -> Result<(), TrustError> {
    if root.root_threshold == 0 || root.root_threshold as usize > root.root_keys.len() {
        return Err(TrustError::BadRoot(format!(
            "needs {} root keys but names {}",
            root.root_threshold,
            root.root_keys.len()
        )));
    }
    if root.signing_threshold == 0 || root.signing_threshold as usize > root.signing_keys.len() {
        return Err(TrustError::BadRoot(format!(
            "needs {} signing keys but names {}",
            root.signing_threshold,
            root.signing_keys.len()
        )));
    }
    Ok(())
}

/// A first root, trusted on first use at enrollment: it must be signed by a threshold of
/// its own root keys, well formed and unexpired. The caller compares its root key ids with
/// what enrollment pinned.
pub fn verify_initial_root(envelope: &Envelope, now: i64) -> Result<RootMetadata, TrustError> {
    let root: RootMetadata = parse("root metadata", envelope)?;
    check_root_shape(&root)?;
    verify_envelope(
        envelope,
        ROOT_PAYLOAD_TYPE,
        &root.root_keys,
        root.root_threshold,
    )
    .map_err(|source| TrustError::Signature {
        document: "root metadata",
        source,
    })?;
    if root.expires <= now {
        return Err(TrustError::Expired {
            document: "root metadata",
            expires: root.expires,
            now,
        });
    }
    Ok(root)
}

/// Root rotation: version N+1 must be signed by a threshold of N's root keys and by a
/// threshold of its own. Roots are taken one version at a time, never skipped.
pub fn verify_root_update(
    trusted: &RootMetadata,
    envelope: &Envelope,
    now: i64,
) -> Result<RootMetadata, TrustError> {
    let offered: RootMetadata = parse("root metadata", envelope)?;
    if offered.version != trusted.version + 1 {
        return Err(TrustError::RootVersion {
            trusted: trusted.version,
            offered: offered.version,
        });
    }
    check_root_shape(&offered)?;
    verify_envelope(
        envelope,
        ROOT_PAYLOAD_TYPE,
        &trusted.root_keys,
        trusted.root_threshold,
    )
    .map_err(|source| TrustError::Signature {
        document: "root metadata (by the trusted root keys)",
        source,
    })?;
    verify_envelope(
        envelope,
        ROOT_PAYLOAD_TYPE,
        &offered.root_keys,
        offered.root_threshold,
    )
    .map_err(|source| TrustError::Signature {
        document: "root metadata (by its own root keys)",
        source,
    })?;
    if offered.expires <= now {
        return Err(TrustError::Expired {
            document: "root metadata",
            expires: offered.expires,
            now,
        });
    }
    Ok(offered)
}

/// Whether a manifest may be trusted: signed by a threshold of the root's signing keys,
/// unexpired (and under an unexpired root), and not a rollback or a replay of an older
/// document unless the signed desired state names this version as a rollback target.
pub fn verify_manifest(
    root: &RootMetadata,
    envelope: &Envelope,
    now: i64,
    trusted: Option<TrustedVersion>,
    rollback_target: bool,
) -> Result<ModelManifest, TrustError> {
    if root.expires <= now {
        return Err(TrustError::Expired {
            document: "root metadata",
            expires: root.expires,
            now,
        });
    }
    verify_envelope(
        envelope,
        MANIFEST_PAYLOAD_TYPE,
        &root.signing_keys,
        root.signing_threshold,
    )
    .map_err(|source| TrustError::Signature {
        document: "manifest",
        source,
    })?;
    let manifest: ModelManifest = parse("manifest", envelope)?;
    if manifest.expires <= now {
        return Err(TrustError::Expired {
            document: "manifest",
            expires: manifest.expires,
            now,
        });
    }
    if let Some(trusted) = trusted {
        if manifest.version < trusted.version && !rollback_target {
            return Err(TrustError::Rollback {
                model: manifest.model,
                offered: manifest.version,
                trusted: trusted.version,
            });
        }
        if manifest.version == trusted.version
            && manifest.document_version < trusted.document_version
        {
            return Err(TrustError::Replay {
                model: manifest.model,
                version: manifest.version,
                offered: manifest.document_version,
                trusted: trusted.document_version,
            });
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::signing::{SigningKey, sign_envelope};

    const NOW: i64 = 1_800_000_000;

    struct Keys {
        root: SigningKey,
        signing: SigningKey,
    }

    fn keys() -> Keys {
        Keys {
            root: SigningKey::generate().unwrap(),
            signing: SigningKey::generate().unwrap(),
        }
    }

    fn root_document(version: u64, keys: &Keys, expires: i64) -> RootMetadata {
        RootMetadata {
            version,
            expires,
            root_keys: vec![keys.root.public_key()],
            root_threshold: 1,
            signing_keys: vec![keys.signing.public_key()],
            signing_threshold: 1,
        }
    }

    fn signed_root(root: &RootMetadata, by: &[&SigningKey]) -> Envelope {
        sign_envelope(ROOT_PAYLOAD_TYPE, serde_json::to_string(root).unwrap(), by)
    }

    fn manifest(version: u64, document_version: u64, expires: i64) -> ModelManifest {
        ModelManifest {
            model: "iris".into(),
            version,
            document_version,
            artifact_sha256: "ab".repeat(32),
            artifact_size: 571,
            inputs: vec![],
            outputs: vec![],
            created: NOW - 10,
            expires,
            annotations: BTreeMap::new(),
            features: None,
        }
    }

    fn signed_manifest(manifest: &ModelManifest, by: &SigningKey) -> Envelope {
        sign_envelope(
            MANIFEST_PAYLOAD_TYPE,
            serde_json::to_string(manifest).unwrap(),
            &[by],
        )
    }

    #[test]
    fn initial_root_must_be_self_signed_and_fresh() {
        let k = keys();
        let root = root_document(1, &k, NOW + 100);
        assert_eq!(
            verify_initial_root(&signed_root(&root, &[&k.root]), NOW).unwrap(),
            root
        );
        assert!(matches!(
            verify_initial_root(&signed_root(&root, &[&k.signing]), NOW),
            Err(TrustError::Signature { .. })
        ));
        let stale = root_document(1, &k, NOW - 1);
        assert!(matches!(
            verify_initial_root(&signed_root(&stale, &[&k.root]), NOW),
            Err(TrustError::Expired { .. })
        ));
        let mut impossible = root.clone();
        impossible.root_threshold = 2;
        assert!(matches!(
            verify_initial_root(&signed_root(&impossible, &[&k.root]), NOW),
            Err(TrustError::BadRoot(_))
        ));
    }

    #[test]
    fn root_rotation_needs_both_roots_and_the_next_version() {
        let (old, new) = (keys(), keys());
        let trusted = root_document(1, &old, NOW + 100);
        let next = root_document(2, &new, NOW + 200);
        assert_eq!(
            verify_root_update(&trusted, &signed_root(&next, &[&old.root, &new.root]), NOW)
                .unwrap(),
            next
        );
        // Only the new key: an attacker holding a fresh key cannot take over.
        assert!(matches!(
            verify_root_update(&trusted, &signed_root(&next, &[&new.root]), NOW),
            Err(TrustError::Signature { .. })
        ));
        // Only the old key: the new root must prove it holds its keys.
        assert!(matches!(
            verify_root_update(&trusted, &signed_root(&next, &[&old.root]), NOW),
            Err(TrustError::Signature { .. })
        ));
        // Skipping a version is refused, as is going back.
        let skipped = root_document(3, &new, NOW + 200);
        assert_eq!(
            verify_root_update(
                &trusted,
                &signed_root(&skipped, &[&old.root, &new.root]),
                NOW
            ),
            Err(TrustError::RootVersion {
                trusted: 1,
                offered: 3
            })
        );
        let same = root_document(1, &new, NOW + 200);
        assert!(matches!(
            verify_root_update(&trusted, &signed_root(&same, &[&old.root, &new.root]), NOW),
            Err(TrustError::RootVersion { .. })
        ));
    }

    #[test]
    fn manifests_need_the_signing_key_and_freshness() {
        let k = keys();
        let root = root_document(1, &k, NOW + 1000);
        let m = manifest(3, 1, NOW + 100);
        assert_eq!(
            verify_manifest(&root, &signed_manifest(&m, &k.signing), NOW, None, false).unwrap(),
            m
        );
        // Signed by the root key (not a signing key) or by a stranger: refused.
        assert!(matches!(
            verify_manifest(&root, &signed_manifest(&m, &k.root), NOW, None, false),
            Err(TrustError::Signature { .. })
        ));
        let stranger = SigningKey::generate().unwrap();
        assert!(matches!(
            verify_manifest(&root, &signed_manifest(&m, &stranger), NOW, None, false),
            Err(TrustError::Signature { .. })
        ));
        // Expired manifest, or a manifest under an expired root (freeze attack).
        let expired = manifest(3, 1, NOW);
        assert!(matches!(
            verify_manifest(
                &root,
                &signed_manifest(&expired, &k.signing),
                NOW,
                None,
                false
            ),
            Err(TrustError::Expired {
                document: "manifest",
                ..
            })
        ));
        let old_root = root_document(1, &k, NOW - 1);
        assert!(matches!(
            verify_manifest(
                &old_root,
                &signed_manifest(&m, &k.signing),
                NOW,
                None,
                false
            ),
            Err(TrustError::Expired {
                document: "root metadata",
                ..
            })
        ));
        // A root manifest type confusion: a root envelope is not a manifest.
        let as_root = sign_envelope(
            ROOT_PAYLOAD_TYPE,
            serde_json::to_string(&m).unwrap(),
            &[&k.signing],
        );
        assert!(verify_manifest(&root, &as_root, NOW, None, false).is_err());
    }

    #[test]
    fn rollback_and_replay_are_refused_unless_named_as_rollback_target() {
        let k = keys();
        let root = root_document(1, &k, NOW + 1000);
        let trusted = Some(TrustedVersion {
            version: 5,
            document_version: 2,
        });
        let older = signed_manifest(&manifest(4, 9, NOW + 100), &k.signing);
        assert_eq!(
            verify_manifest(&root, &older, NOW, trusted, false),
            Err(TrustError::Rollback {
                model: "iris".into(),
                offered: 4,
                trusted: 5
            })
        );
        assert!(
            verify_manifest(&root, &older, NOW, trusted, true).is_ok(),
            "explicit rollback target"
        );
        let replayed = signed_manifest(&manifest(5, 1, NOW + 100), &k.signing);
        assert!(matches!(
            verify_manifest(&root, &replayed, NOW, trusted, true),
            Err(TrustError::Replay { .. })
        ));
        let resigned = signed_manifest(&manifest(5, 3, NOW + 100), &k.signing);
        assert!(verify_manifest(&root, &resigned, NOW, trusted, false).is_ok());
        let newer = signed_manifest(&manifest(6, 1, NOW + 100), &k.signing);
        assert!(verify_manifest(&root, &newer, NOW, trusted, false).is_ok());
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let k = keys();
        let root = root_document(1, &k, NOW + 1000);
        let junk = sign_envelope(MANIFEST_PAYLOAD_TYPE, "{\"model\": 1".into(), &[&k.signing]);
        assert!(matches!(
            verify_manifest(&root, &junk, NOW, None, false),
            Err(TrustError::Malformed { .. })
        ));
        let extra = sign_envelope(
            MANIFEST_PAYLOAD_TYPE,
            serde_json::to_string(&root).unwrap(),
            &[&k.signing],
        );
        assert!(matches!(
            verify_manifest(&root, &extra, NOW, None, false),
            Err(TrustError::Malformed { .. })
        ));
    }
}
