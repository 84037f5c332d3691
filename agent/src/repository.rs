//! The models this agent serves, by name and version, and how new versions replace old ones.
//!
//! Readers take an `Arc` of an immutable snapshot, so a request keeps the exact model version
//! it started with even if a reload swaps the snapshot meanwhile, and a reload never shows a
//! half-loaded model: new versions are loaded fully beside the old ones, then one pointer
//! swap makes them visible. Old versions are freed when their last request finishes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use flotilla_proto::inference::RepositoryIndexEntry;

use crate::config::ModelConfig;
use flotilla_runtime::{LoadError, LoadedModel, SessionSettings};

/// Name of the model file inside a numbered version folder (Triton's layout).
pub const VERSION_FILE_NAME: &str = "model.onnx";

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model {name:?}: {path} does not exist")]
    Missing { name: String, path: PathBuf },
    #[error("model {name:?}: cannot read folder {path}: {source}")]
    ReadDir {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model {name:?}: folder {path} has no version folders; expected {path}/1/{VERSION_FILE_NAME}"
    )]
    NoVersions { name: String, path: PathBuf },
    #[error("model {name:?} version {version}: {source}")]
    Load {
        name: String,
        version: u64,
        source: LoadError,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LookupError {
    #[error("unknown model {0:?}; GET /v2/repository/index lists the served models")]
    UnknownModel(String),
    #[error("model {model:?} has no version {version:?}; it has versions {available}")]
    UnknownVersion {
        model: String,
        version: String,
        available: String,
    },
}

#[derive(Debug, Clone)]
struct ModelSource {
    name: String,
    path: PathBuf,
    settings: SessionSettings,
}

/// What identifies a model file's content cheaply: a changed file gets reloaded.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, Clone)]
struct VersionEntry {
    model: Arc<LoadedModel>,
    fingerprint: Fingerprint,
}

type Versions = BTreeMap<u64, VersionEntry>;

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadReport {
    pub loaded: Vec<(String, u64)>,
    pub unloaded: Vec<(String, u64)>,
    pub errors: Vec<String>,
    /// The versions on disk that do not load, with why: this reload's failures and those
    /// remembered from earlier reloads of the same file content.
    pub failed: Vec<FailedLoad>,
}

/// A model version whose file does not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedLoad {
    pub model: String,
    pub version: u64,
    pub reason: String,
}

#[derive(Debug)]
pub struct ModelRepository {
    sources: RwLock<Vec<ModelSource>>,
    /// Default versions chosen by the caller (the hub-driven install pins the version it
    /// switched to). Unpinned models default to their highest version.
    pins: RwLock<BTreeMap<String, u64>>,
    snapshot: RwLock<Arc<BTreeMap<String, Versions>>>,
    /// Versions whose file failed to load, with the fingerprint that failed: not retried
    /// until the file changes, so a bad file is reported once, not at every poll.
    failed: Mutex<HashMap<(String, u64), (Fingerprint, String)>>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl ModelRepository {
    /// Loads every configured model and version; any failure is a start-up error naming the
    /// file. Blocking.
    pub fn load(models: &[ModelConfig]) -> Result<ModelRepository, RepositoryError> {
        let sources: Vec<ModelSource> = models
            .iter()
            .map(|m| ModelSource {
                name: m.name.clone(),
                path: m.path.clone(),
                settings: m.session_settings(),
            })
            .collect();
        let mut snapshot = BTreeMap::new();
        for source in &sources {
            let mut versions = Versions::new();
            for (version, (path, fingerprint)) in versions_on_disk(source)? {
                let model = LoadedModel::load(&source.name, version, &path, &source.settings)
                    .map_err(|e| RepositoryError::Load {
                        name: source.name.clone(),
                        version,
                        source: e,
                    })?;
                tracing::info!(model = %source.name, version, path = %path.display(), "model loaded");
                versions.insert(
                    version,
                    VersionEntry {
                        model: Arc::new(model),
                        fingerprint,
                    },
                );
            }
            snapshot.insert(source.name.clone(), versions);
        }
        Ok(ModelRepository {
            sources: RwLock::new(sources),
            pins: RwLock::new(BTreeMap::new()),
            snapshot: RwLock::new(Arc::new(snapshot)),
            failed: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Versions>> {
        self.snapshot
            .read()
            .expect("snapshot lock is never poisoned: no panics while held")
            .clone()
    }

    /// Serves another model from now on (an empty repository is fine: the agent starts
    /// with no model before its first install). Loading happens at the next `reload`.
    pub fn add_source(&self, model: &ModelConfig) {
        let mut sources = self
            .sources
            .write()
            .expect("sources lock is never poisoned");
        if !sources.iter().any(|s| s.name == model.name) {
            sources.push(ModelSource {
                name: model.name.clone(),
                path: model.path.clone(),
                settings: model.session_settings(),
            });
        }
    }

    /// Makes `version` the default of `name` in one step (it must be loaded). This is the
    /// atomic switch of an install: requests already running keep their version.
    pub fn pin(&self, name: &str, version: u64) -> Result<(), LookupError> {
        self.get(name, Some(&version.to_string()))?;
        self.pins
            .write()
            .expect("pins lock is never poisoned")
            .insert(name.to_owned(), version);
        Ok(())
    }

    /// The model version to run: `version` if given, else the pinned one, else the highest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, LookupError> {
        let snapshot = self.snapshot();
        let versions = snapshot
            .get(name)
            .ok_or_else(|| LookupError::UnknownModel(name.to_owned()))?;
        let pinned = self
            .pins
            .read()
            .expect("pins lock is never poisoned")
            .get(name)
            .copied();
        let entry = match version {
            None => pinned
                .and_then(|v| versions.get(&v))
                .or_else(|| versions.values().next_back()),
            Some(text) => text.parse::<u64>().ok().and_then(|v| versions.get(&v)),
        };
        entry
            .map(|e| e.model.clone())
            .ok_or_else(|| LookupError::UnknownVersion {
                model: name.to_owned(),
                version: version.unwrap_or_default().to_owned(),
                available: versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Requests waiting for a session, per loaded model version.
    pub fn waiting(&self) -> Vec<(String, u64, usize)> {
        let snapshot = self.snapshot();
        snapshot
            .iter()
            .flat_map(|(name, versions)| {
                versions
                    .iter()
                    .map(move |(v, e)| (name.clone(), *v, e.model.waiting()))
            })
            .collect()
    }

    /// Loaded versions of a model, ascending.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.snapshot()
            .get(name)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn is_known(&self, name: &str) -> bool {
        self.sources
            .read()
            .expect("sources lock is never poisoned")
            .iter()
            .any(|s| s.name == name)
    }

    /// Whether every configured model has a version to serve.
    pub fn all_ready(&self) -> bool {
        let snapshot = self.snapshot();
        let sources = self.sources.read().expect("sources lock is never poisoned");
        sources
            .iter()
            .all(|s| snapshot.get(&s.name).is_some_and(|v| !v.is_empty()))
    }

    /// Triton's repository index: every loaded version is READY; failed loads are listed
    /// as UNAVAILABLE with the reason.
    pub fn index(&self) -> Vec<RepositoryIndexEntry> {
        let snapshot = self.snapshot();
        let mut entries: Vec<RepositoryIndexEntry> = snapshot
            .iter()
            .flat_map(|(name, versions)| {
                versions.keys().map(move |v| RepositoryIndexEntry {
                    name: name.clone(),
                    version: v.to_string(),
                    state: "READY".into(),
                    reason: String::new(),
                })
            })
            .collect();
        let failed = self
            .failed
            .lock()
            .expect("failed-load lock is never poisoned");
        for ((name, version), (_, reason)) in failed.iter() {
            if !snapshot.get(name).is_some_and(|v| v.contains_key(version)) {
                let (name, version, reason) = (name.clone(), version.to_string(), reason.clone());
                entries.push(RepositoryIndexEntry {
                    name,
                    version,
                    state: "UNAVAILABLE".into(),
                    reason,
                });
            }
        }
        entries
    }

    /// Re-reads the model folders (all, or one model) and swaps in what changed: new or
    /// modified versions are loaded beside the old ones; removed versions are dropped, except
    /// that a model always keeps at least one version. Failures keep what was served.
    pub async fn reload(&self, only: Option<&str>) -> ReloadReport {
        let _one_reload_at_a_time = self.reload_lock.lock().await;
        let mut report = ReloadReport::default();
        let mut next = (*self.snapshot()).clone();
        // A copy: loading takes long, and the list must not stay locked meanwhile.
        let sources: Vec<ModelSource> = self
            .sources
            .read()
            .expect("sources lock is never poisoned")
            .clone();
        for source in sources
            .iter()
            .filter(|s| only.is_none_or(|name| s.name == name))
        {
            let on_disk = match versions_on_disk(source) {
                Ok(found) => found,
                Err(error) => {
                    report
                        .errors
                        .push(format!("{error}; still serving what was loaded"));
                    continue;
                }
            };
            let current = next.get(&source.name).cloned().unwrap_or_default();
            let mut updated = Versions::new();
            for (version, (path, fingerprint)) in on_disk {
                if let Some(entry) = current
                    .get(&version)
                    .filter(|e| e.fingerprint == fingerprint)
                {
                    updated.insert(version, entry.clone());
                    continue;
                }
                let key = (source.name.clone(), version);
                let remembered = self
                    .failed
                    .lock()
                    .expect("failed-load lock")
                    .get(&key)
                    .filter(|(f, _)| *f == fingerprint)
                    .map(|(_, reason)| reason.clone());
                if let Some(remembered) = remembered {
                    report.failed.push(FailedLoad {
                        model: source.name.clone(),
                        version,
                        reason: remembered,
                    });
                    if let Some(entry) = current.get(&version) {
                        updated.insert(version, entry.clone());
                    }
                    continue;
                }
                let (name, settings) = (source.name.clone(), source.settings.clone());
                let loaded = tokio::task::spawn_blocking(move || {
                    LoadedModel::load(&name, version, &path, &settings)
                })
                .await;
                match loaded {
                    Ok(Ok(model)) => {
                        self.failed.lock().expect("failed-load lock").remove(&key);
                        tracing::info!(model = %source.name, version, "model version loaded");
                        report.loaded.push(key);
                        updated.insert(
                            version,
                            VersionEntry {
                                model: Arc::new(model),
                                fingerprint,
                            },
                        );
                    }
                    Ok(Err(error)) => {
                        let message = format!("model {:?} version {version}: {error}", source.name);
                        tracing::warn!("{message}");
                        self.failed
                            .lock()
                            .expect("failed-load lock")
                            .insert(key, (fingerprint, message.clone()));
                        report.failed.push(FailedLoad {
                            model: source.name.clone(),
                            version,
                            reason: message.clone(),
                        });
                        report.errors.push(message);
                        if let Some(entry) = current.get(&version) {
                            updated.insert(version, entry.clone());
                        }
                    }
                    Err(join_error) => report.errors.push(format!(
                        "model {:?} version {version}: loader failed: {join_error}",
                        source.name
                    )),
                }
            }
            if updated.is_empty() {
                if !current.is_empty() {
                    report.errors.push(format!(
                        "model {:?}: no loadable version on disk; still serving what was loaded",
                        source.name
                    ));
                }
                continue;
            }
            for version in current.keys().filter(|v| !updated.contains_key(v)) {
                tracing::info!(model = %source.name, version, "model version unloaded");
                report.unloaded.push((source.name.clone(), *version));
            }
            next.insert(source.name.clone(), updated);
        }
        *self
            .snapshot
            .write()
            .expect("snapshot lock is never poisoned") = Arc::new(next);
        report
    }
}

/// The versions a source holds on disk: a file is version 1; a folder holds numbered version
/// folders, each with a `model.onnx` (a folder without one yet is not a version yet).
fn versions_on_disk(
    source: &ModelSource,
) -> Result<BTreeMap<u64, (PathBuf, Fingerprint)>, RepositoryError> {
    let name = source.name.clone();
    let path = &source.path;
    let metadata = std::fs::metadata(path).map_err(|_| RepositoryError::Missing {
        name: name.clone(),
        path: path.clone(),
    })?;
    if !metadata.is_dir() {
        return Ok(BTreeMap::from([(
            1,
            (path.clone(), fingerprint(&metadata)),
        )]));
    }
    let read_error = |source| RepositoryError::ReadDir {
        name: name.clone(),
        path: path.clone(),
        source,
    };
    let mut versions = BTreeMap::new();
    for entry in std::fs::read_dir(path).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|v| *v > 0)
        else {
            continue;
        };
        let file = entry.path().join(VERSION_FILE_NAME);
        if let Ok(metadata) = std::fs::metadata(&file)
            && metadata.is_file()
        {
            versions.insert(version, (file, fingerprint(&metadata)));
        }
    }
    if versions.is_empty() {
        return Err(RepositoryError::NoVersions {
            name,
            path: path.clone(),
        });
    }
    Ok(versions)
}

fn fingerprint(metadata: &std::fs::Metadata) -> Fingerprint {
    Fingerprint {
        len: metadata.len(),
        modified: metadata.modified().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    /// A failure is reported for its own version only: version 10 failing says nothing about
    /// version 1 (an install checks its own version's failure by number, not by text).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_failures_name_their_model_and_version() {
        flotilla_runtime::init_onnx_runtime(None).expect("ONNX Runtime (deploy/setup.sh)");
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("iris");
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/iris_classifier.onnx");
        for (version, bytes) in [
            (1, std::fs::read(&fixture).unwrap()),
            (10, b"not a model".to_vec()),
        ] {
            std::fs::create_dir_all(model_dir.join(version.to_string())).unwrap();
            std::fs::write(
                model_dir.join(version.to_string()).join(VERSION_FILE_NAME),
                bytes,
            )
            .unwrap();
        }
        let repository = ModelRepository::load(&[]).unwrap();
        repository.add_source(&ModelConfig {
            name: "iris".into(),
            path: model_dir,
            sessions: Some(1),
            intra_op_threads: Some(1),
            queue_depth: None,
            engine: Default::default(),
        });
        let report = repository.reload(Some("iris")).await;
        assert_eq!(report.loaded, [("iris".to_owned(), 1)]);
        assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            (report.failed[0].model.as_str(), report.failed[0].version),
            ("iris", 10)
        );
        // The same content again: remembered, not loaded again, still reported.
        let again = repository.reload(Some("iris")).await;
        assert_eq!(again.failed.len(), 1);
        assert_eq!(again.failed[0].version, 10);
        assert!(again.errors.is_empty(), "{:?}", again.errors);
    }
}
