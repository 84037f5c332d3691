//! The model registry's rules: names, monotonic versions, content-addressed artifacts that
//! must load in ONNX Runtime, signed manifests, aliases and retirement. The store holds the
//! state; this module decides what may change. Blocking (file I/O, ONNX Runtime, SQLite).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use flotilla_common::clock::SharedClock;
use flotilla_common::signing::{SigningKey, sign_envelope};
use flotilla_common::telemetry::{default_feature_map, feature_map_for};
use flotilla_proto::inference::TensorMetadata;
use flotilla_proto::telemetry::FeatureMap;
use flotilla_proto::trust::{Envelope, MANIFEST_PAYLOAD_TYPE, ModelManifest};
use flotilla_runtime::{LoadError, inspect_model};
use tempfile::NamedTempFile;

use crate::data_dir::DataDir;
use crate::store::{NewVersion, PushOutcome, RegistryStore, StoreError, VersionRecord};

/// Default manifest lifetime: 30 days, re-signed when fewer than `RESIGN_BEFORE_SECONDS` remain.
pub const MANIFEST_LIFETIME_SECONDS: i64 = 30 * 24 * 3600;
pub const RESIGN_BEFORE_SECONDS: i64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "name {0:?} is not allowed: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadName(String),
    #[error("the upload is not a model ONNX Runtime can load: {0}")]
    NotLoadable(String),
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model {model:?} has no version or alias {version:?}")]
    UnknownVersion { model: String, version: String },
    #[error("model {model:?} version {version} is retired")]
    Retired { model: String, version: u64 },
    #[error("alias {0:?} is a number; aliases are names (numbers mean versions)")]
    NumericAlias(String),
    #[error("feature map: {0}")]
    BadFeatureMap(String),
    #[error("cannot store the artifact: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// A copy for error conversion where only a reference is at hand (the I/O and store
    /// variants keep their message).
    pub fn from_ref(error: &RegistryError) -> RegistryError {
        match error {
            RegistryError::BadName(n) => RegistryError::BadName(n.clone()),
            RegistryError::NotLoadable(m) => RegistryError::NotLoadable(m.clone()),
            RegistryError::UnknownModel(m) => RegistryError::UnknownModel(m.clone()),
            RegistryError::UnknownVersion { model, version } => RegistryError::UnknownVersion {
                model: model.clone(),
                version: version.clone(),
            },
            RegistryError::Retired { model, version } => RegistryError::Retired {
                model: model.clone(),
                version: *version,
            },
            RegistryError::NumericAlias(a) => RegistryError::NumericAlias(a.clone()),
            RegistryError::BadFeatureMap(m) => RegistryError::BadFeatureMap(m.clone()),
            other => RegistryError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Metadata given with a push: the API's push request.
pub type PushMetadata = flotilla_api::models::PushRequest;

#[derive(Debug, Clone, PartialEq)]
pub struct PushResult {
    pub version: u64,
    /// False when the same content was already registered: pushes are idempotent.
    pub created: bool,
    pub sha256: String,
    pub size: u64,
}

/// The key that signs manifests and desired states, and the root metadata version that
/// names it (signed into desired states: devices order them by root version, then sequence,
/// so a rotation away from a leaked key also undoes whatever sequence it forged).
#[derive(Debug)]
pub struct Signer {
    pub key: SigningKey,
    pub root_version: u64,
}

impl Signer {
    /// The hub's signing key and the version of the newest root metadata in `store`.
    pub fn load(data_dir: &DataDir, store: &dyn RegistryStore) -> Result<Signer, RegistryError> {
        let key = data_dir
            .load_signing_key()
            .map_err(|e| RegistryError::Io(std::io::Error::other(e.to_string())))?;
        let root: Envelope = serde_json::from_str(
            &store
                .latest_root()?
                .ok_or_else(|| StoreError::Corrupt("the hub has no root metadata".into()))?,
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let root: flotilla_proto::trust::RootMetadata =
            serde_json::from_str(&root.payload).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Signer {
            key,
            root_version: root.version,
        })
    }
}

#[derive(Debug)]
pub struct Registry {
    data_dir: DataDir,
    store: Arc<dyn RegistryStore>,
    /// Swapped whole when the signing key is rotated; readers take an `Arc`.
    signer: std::sync::RwLock<Arc<Signer>>,
    clock: SharedClock,
}

pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let valid = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(RegistryError::BadName(name.to_owned()))
    }
}

/// The version's feature map: the default from its schema, with the names and categorical
/// features the pusher gave. Names given for a model without a 2-D feature input, or of the
/// wrong count, are refused rather than ignored.
fn feature_map(
    inputs: &[TensorMetadata],
    outputs: &[TensorMetadata],
    metadata: &PushMetadata,
) -> Result<Option<FeatureMap>, RegistryError> {
    let chosen = match &metadata.feature_input {
        Some(name) => {
            let input = inputs.iter().find(|t| &t.name == name).ok_or_else(|| {
                RegistryError::BadFeatureMap(format!(
                    "the model has no input {name:?}; its inputs are {:?}",
                    inputs.iter().map(|t| &t.name).collect::<Vec<_>>()
                ))
            })?;
            Some(feature_map_for(input, outputs).ok_or_else(|| {
                RegistryError::BadFeatureMap(format!(
                    "input {name:?} is {} {:?}, not a 2-D numeric [N, F] with fixed F",
                    input.datatype, input.shape
                ))
            })?)
        }
        None => default_feature_map(inputs, outputs),
    };
    let Some(mut map) = chosen else {
        return match &metadata.feature_names {
            Some(_) => Err(RegistryError::BadFeatureMap(
                "the model has no 2-D numeric input [N, F] to name features of".into(),
            )),
            None => Ok(None),
        };
    };
    if let Some(wanted) = &metadata.prediction_outputs {
        if let Some(unknown) = wanted
            .iter()
            .find(|w| !outputs.iter().any(|o| &o.name == *w))
        {
            return Err(RegistryError::BadFeatureMap(format!(
                "the model has no output {unknown:?}; its outputs are {:?}",
                outputs.iter().map(|t| &t.name).collect::<Vec<_>>()
            )));
        }
        map.predictions.retain(|p| wanted.contains(&p.output));
    }
    if let Some(names) = &metadata.feature_names {
        if names.len() != map.features.len() {
            return Err(RegistryError::BadFeatureMap(format!(
                "{} feature names given but input {:?} has {} columns",
                names.len(),
                map.input,
                map.features.len()
            )));
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() || names.iter().any(|n| n.is_empty()) {
            return Err(RegistryError::BadFeatureMap(
                "feature names must be distinct and not empty".into(),
            ));
        }
        map.features = names.clone();
    }
    if let Some(unknown) = metadata
        .categorical
        .iter()
        .find(|c| !map.features.contains(c))
    {
        return Err(RegistryError::BadFeatureMap(format!(
            "categorical feature {unknown:?} is not one of {:?}",
            map.features
        )));
    }
    map.categorical = metadata.categorical.clone();
    Ok(Some(map))
}

impl Registry {
    pub fn new(
        data_dir: DataDir,
        store: Arc<dyn RegistryStore>,
        signer: Signer,
        clock: SharedClock,
    ) -> Registry {
        Registry {
            data_dir,
            store,
            signer: std::sync::RwLock::new(Arc::new(signer)),
            clock,
        }
    }

    /// The current signing key and its root version.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    /// The hub's clock, which every part of the hub reads time from.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Registers an uploaded file (already hashed while it was received). The file must
    /// load in ONNX Runtime; its inputs and outputs become the version's schema.
    pub fn push(
        &self,
        model: &str,
        upload: NamedTempFile,
        sha256: &str,
        size: u64,
        metadata: PushMetadata,
        actor: &str,
    ) -> Result<PushResult, RegistryError> {
        check_name(model)?;
        if let Some(existing) = self
            .store
            .versions(model)?
            .into_iter()
            .find(|v| v.artifact_sha256 == sha256)
        {
            return Ok(PushResult {
                version: existing.version,
                created: false,
                sha256: sha256.to_owned(),
                size,
            });
        }
        let spool = upload.path().display().to_string();
        let signature = inspect_model(upload.path()).map_err(|e| match e {
            // The path is a temporary spool file: its name would only confuse.
            LoadError::Invalid { message, .. } => {
                RegistryError::NotLoadable(message.replace(&spool, "the upload"))
            }
            other => RegistryError::NotLoadable(other.to_string().replace(&spool, "the upload")),
        })?;
        let inputs: Vec<_> = signature.inputs.iter().map(|s| s.metadata()).collect();
        let outputs: Vec<_> = signature.outputs.iter().map(|s| s.metadata()).collect();
        let mut features = feature_map(&inputs, &outputs, &metadata)?;
        if metadata.feature_names.is_none() && metadata.feature_input.is_none() {
            // A retrain keeps its feature names: without names given, a version whose feature
            // input matches the latest version's takes that version's names and categoricals,
            // so its windows compare with the old cohort's feature by feature.
            if let (Some(map), Some(previous)) =
                (features.as_mut(), self.latest_feature_map(model)?)
                && previous.input == map.input
                && previous.features.len() == map.features.len()
            {
                map.features = previous.features;
                if metadata.categorical.is_empty() {
                    map.categorical = previous.categorical;
                }
            }
        }
        self.store_artifact(upload, sha256)?;
        let now = self.now();
        let new = NewVersion {
            model: model.to_owned(),
            artifact_sha256: sha256.to_owned(),
            artifact_size: size,
            inputs_json: serde_json::to_string(&inputs).expect("metadata serializes"),
            outputs_json: serde_json::to_string(&outputs).expect("metadata serializes"),
            metrics: metadata.metrics,
            tags: metadata.tags.clone(),
            lineage: metadata.lineage.clone(),
            created: now,
            actor: actor.to_owned(),
        };
        let mut annotations = BTreeMap::new();
        annotations.extend(
            metadata
                .tags
                .iter()
                .map(|(k, v)| (format!("tag.{k}"), v.clone())),
        );
        annotations.extend(
            metadata
                .lineage
                .iter()
                .map(|(k, v)| (format!("lineage.{k}"), v.clone())),
        );
        let sign = |version: u64| {
            let manifest = ModelManifest {
                model: model.to_owned(),
                version,
                document_version: 1,
                artifact_sha256: sha256.to_owned(),
                artifact_size: size,
                inputs: inputs.clone(),
                outputs: outputs.clone(),
                created: now,
                expires: now + MANIFEST_LIFETIME_SECONDS,
                annotations: annotations.clone(),
                features: features.clone(),
            };
            (self.sign_manifest(&manifest), manifest.expires)
        };
        let (version, created) = match self.store.push_version(&new, &sign)? {
            PushOutcome::Created(v) => (v, true),
            PushOutcome::Existing(v) => (v, false),
        };
        if created {
            self.prepare_transfer_forms(model, version, sha256);
        }
        Ok(PushResult {
            version,
            created,
            sha256: sha256.to_owned(),
            size,
        })
    }

    fn sign_manifest(&self, manifest: &ModelManifest) -> String {
        let envelope = sign_envelope(
            MANIFEST_PAYLOAD_TYPE,
            serde_json::to_string(manifest).expect("manifest serializes"),
            &[&self.signer().key],
        );
        serde_json::to_string(&envelope).expect("envelope serializes")
    }

    /// Moves the upload to its content address (fsynced, renamed into place), unless the same
    /// content is already there.
    fn store_artifact(&self, upload: NamedTempFile, sha256: &str) -> Result<(), RegistryError> {
        let path = self.data_dir.artifact(sha256);
        if path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(path.parent().expect("artifact paths have a folder"))?;
        upload.as_file().sync_all()?;
        upload.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Makes the compressed forms agents download: the whole file zstd-compressed, and a
    /// patch against the model's previous active version when that is smaller. A failure
    /// here only costs bandwidth (agents fall back to the raw file), so it is logged, not
    /// returned.
    fn prepare_transfer_forms(&self, model: &str, version: u64, sha256: &str) {
        use flotilla_common::artifact_protocol::Encoding;
        use flotilla_common::compression::{compress, compress_patch};
        let result = (|| -> Result<(), String> {
            let raw = std::fs::read(self.data_dir.artifact(sha256)).map_err(|e| e.to_string())?;
            let whole = compress(&raw).map_err(|e| e.to_string())?;
            self.write_form(sha256, &Encoding::Zstd, &whole)?;
            let previous = self
                .store
                .versions(model)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|v| {
                    v.version < version && v.retired.is_none() && v.artifact_sha256 != sha256
                })
                .max_by_key(|v| v.version);
            if let Some(previous) = previous {
                let reference = std::fs::read(self.data_dir.artifact(&previous.artifact_sha256))
                    .map_err(|e| e.to_string())?;
                let patch = compress_patch(&reference, &raw).map_err(|e| e.to_string())?;
                if patch.len() < whole.len() {
                    self.write_form(
                        sha256,
                        &Encoding::Patch {
                            base_sha256: previous.artifact_sha256.clone(),
                        },
                        &patch,
                    )?;
                }
            }
            Ok(())
        })();
        if let Err(error) = result {
            tracing::warn!(model, version, %error, "cannot prepare compressed transfer forms; devices will download the raw file");
        }
    }

    fn write_form(
        &self,
        sha256: &str,
        encoding: &flotilla_common::artifact_protocol::Encoding,
        bytes: &[u8],
    ) -> Result<(), String> {
        use std::io::Write;
        let path = self
            .data_dir
            .artifact(sha256)
            .with_file_name(encoding.file_name(sha256));
        let folder = path.parent().expect("artifact paths have a folder");
        let mut file = NamedTempFile::new_in(folder).map_err(|e| e.to_string())?;
        file.write_all(bytes).map_err(|e| e.to_string())?;
        file.as_file().sync_all().map_err(|e| e.to_string())?;
        file.persist(&path).map_err(|e| e.error.to_string())?;
        Ok(())
    }

    pub fn artifact_path(&self, sha256: &str) -> std::path::PathBuf {
        self.data_dir.artifact(sha256)
    }

    /// A version by number or alias.
    pub fn resolve(
        &self,
        model: &str,
        version_or_alias: &str,
    ) -> Result<VersionRecord, RegistryError> {
        let unknown = || RegistryError::UnknownVersion {
            model: model.to_owned(),
            version: version_or_alias.to_owned(),
        };
        let version = match version_or_alias.parse::<u64>() {
            Ok(number) => number,
            Err(_) => *self
                .store
                .aliases(model)?
                .get(version_or_alias)
                .ok_or_else(unknown)?,
        };
        self.store.version(model, version)?.ok_or_else(unknown)
    }

    /// The feature map in the latest version's signed manifest, if any.
    fn latest_feature_map(
        &self,
        model: &str,
    ) -> Result<Option<flotilla_proto::telemetry::FeatureMap>, RegistryError> {
        let Some(latest) = self
            .store
            .versions(model)?
            .into_iter()
            .max_by_key(|v| v.version)
        else {
            return Ok(None);
        };
        let manifest = serde_json::from_str::<flotilla_proto::trust::Envelope>(&latest.manifest)
            .ok()
            .and_then(|e| {
                serde_json::from_str::<flotilla_proto::trust::ModelManifest>(&e.payload).ok()
            });
        Ok(manifest.and_then(|m| m.features))
    }

    pub fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version_or_alias: &str,
        actor: &str,
    ) -> Result<u64, RegistryError> {
        check_name(alias)?;
        if alias.parse::<u64>().is_ok() {
            return Err(RegistryError::NumericAlias(alias.to_owned()));
        }
        let record = self.resolve(model, version_or_alias)?;
        if record.retired.is_some() {
            return Err(RegistryError::Retired {
                model: model.to_owned(),
                version: record.version,
            });
        }
        self.store
            .set_alias(model, alias, Some(record.version), self.now(), actor)?;
        Ok(record.version)
    }

    pub fn remove_alias(&self, model: &str, alias: &str, actor: &str) -> Result<(), RegistryError> {
        if !self.store.aliases(model)?.contains_key(alias) {
            return Err(RegistryError::UnknownVersion {
                model: model.to_owned(),
                version: alias.to_owned(),
            });
        }
        self.store
            .set_alias(model, alias, None, self.now(), actor)?;
        Ok(())
    }

    /// Retires a version: it stays on record but can no longer be aliased or deployed.
    /// Aliases pointing at it are removed.
    pub fn retire(&self, model: &str, version: u64, actor: &str) -> Result<(), RegistryError> {
        self.resolve(model, &version.to_string())?;
        for (alias, target) in self.store.aliases(model)? {
            if target == version {
                self.store
                    .set_alias(model, &alias, None, self.now(), actor)?;
            }
        }
        self.store.retire(model, version, self.now(), actor)?;
        Ok(())
    }

    /// Re-signs manifests that expire within `RESIGN_BEFORE_SECONDS`, each with the next
    /// document version, so devices never hold an expired manifest of a live version.
    pub fn resign_expiring(&self) -> Result<usize, RegistryError> {
        let due = self
            .store
            .manifests_expiring(self.now() + RESIGN_BEFORE_SECONDS)?;
        for record in &due {
            self.resign(record, "hub")?;
        }
        Ok(due.len())
    }

    /// Re-signs one version's manifest with the current signing key: next document
    /// version, a fresh expiry.
    fn resign(&self, record: &VersionRecord, actor: &str) -> Result<(), RegistryError> {
        let now = self.now();
        let envelope: Envelope = serde_json::from_str(&record.manifest)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut manifest: ModelManifest = serde_json::from_str(&envelope.payload)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        manifest.document_version += 1;
        manifest.expires = now + MANIFEST_LIFETIME_SECONDS;
        self.store.replace_manifest(
            &record.model,
            record.version,
            &self.sign_manifest(&manifest),
            manifest.expires,
        )?;
        self.store.audit(
            now,
            actor,
            "manifest.resign",
            &format!(
                "{} version {} document {}",
                record.model, record.version, manifest.document_version
            ),
        )?;
        Ok(())
    }

    /// Rotates the signing key: a new key, root metadata version N+1 naming it (signed by the
    /// root key: from `root_key_file` or the hub's own), every live manifest re-signed.
    /// Agents take root N+1 when a document signed by the new key reaches them.
    pub fn rotate_signing_key(
        &self,
        root_key_file: Option<&Path>,
        actor: &str,
    ) -> Result<u64, RotationError> {
        use flotilla_common::signing::sign_envelope;
        use flotilla_proto::trust::{ROOT_PAYLOAD_TYPE, RootMetadata};
        let root_key = self.data_dir.load_root_key(root_key_file)?;
        let current: Envelope =
            serde_json::from_str(&self.store.latest_root()?.ok_or(RotationError::NoRoot)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let current: RootMetadata = serde_json::from_str(&current.payload)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !current
            .root_keys
            .iter()
            .any(|k| k.key_id == root_key.key_id())
        {
            return Err(RotationError::WrongRootKey);
        }
        let signing_key = SigningKey::generate().map_err(|e| RotationError::Key(e.to_string()))?;
        let next = RootMetadata {
            version: current.version + 1,
            expires: self.now() + crate::data_dir::ROOT_LIFETIME_SECONDS,
            root_keys: current.root_keys.clone(),
            root_threshold: current.root_threshold,
            signing_keys: vec![signing_key.public_key()],
            signing_threshold: 1,
        };
        let envelope = sign_envelope(
            ROOT_PAYLOAD_TYPE,
            serde_json::to_string(&next).expect("root serializes"),
            &[&root_key],
        );
        self.store.insert_root(
            next.version,
            &serde_json::to_string(&envelope).expect("envelope serializes"),
        )?;
        self.data_dir.replace_signing_key(&signing_key)?;
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Signer {
            key: signing_key,
            root_version: next.version,
        });
        for model in self.store.models()? {
            for record in self
                .store
                .versions(&model.name)?
                .iter()
                .filter(|v| v.retired.is_none())
            {
                self.resign(record, actor)?;
            }
        }
        self.store.audit(
            self.now(),
            actor,
            "keys.rotate",
            &format!("root version {} names a new signing key", next.version),
        )?;
        Ok(next.version)
    }
}

/// Why a key rotation could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    #[error("the given root key is not a root key of the current root metadata")]
    WrongRootKey,
    #[error("the hub has no root metadata")]
    NoRoot,
    #[error("cannot make a key: {0}")]
    Key(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
