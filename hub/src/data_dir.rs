//! The hub's data folder: `hub.db` (SQLite), `keys/` (root and signing keys, mode 0600),
//! `artifacts/sha256/` (model files by content hash). `init` creates it; `open` checks it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flotilla_common::signing::{SigningKey, sign_envelope};
use flotilla_proto::trust::{ROOT_PAYLOAD_TYPE, RootMetadata};
use sha2::{Digest, Sha256};

use crate::store::{RegistryStore, Scope, SqliteStore, StoreError};

/// How long root metadata is valid when made by `init`: a year; rotate before then.
pub const ROOT_LIFETIME_SECONDS: i64 = 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{0} already holds a hub (hub.db exists); use another folder or serve this one")]
    AlreadyInitialized(PathBuf),
    #[error("{0} is not a hub data folder (no hub.db); run flotilla-hub init --data-dir {0} first")]
    NotInitialized(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the root key is not on this hub (it was exported and removed); rotate with flotilla-hub root rotate --data-dir DIR --root-key FILE on the hub machine"
    )]
    RootKeyOffline,
    #[error("cannot make a key: {0}")]
    Signing(#[from] flotilla_common::signing::SigningError),
}

#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

/// What `init` hands back once: the admin tokens in clear (only their hashes are stored).
#[derive(Debug)]
pub struct InitOutcome {
    pub operator_token: String,
    pub read_token: String,
    pub root_key_id: String,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_owned(),
        }
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("hub.db")
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn root_key(&self) -> PathBuf {
        self.keys().join("root.key")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.keys().join("signing.key")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts/sha256")
    }
    pub fn artifact(&self, sha256: &str) -> PathBuf {
        self.artifacts().join(&sha256[..2]).join(sha256)
    }
    /// Where pushes are spooled while they arrive.
    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// Removes what pushes left in `uploads/` when the hub was killed mid-upload. Only
    /// the serving hub writes there, so at start-up nothing in it is in flight. Returns how
    /// many files went.
    pub fn clear_abandoned_uploads(&self) -> Result<usize, DataDirError> {
        let folder = self.uploads();
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(DataDirError::Write {
                    path: folder,
                    source,
                });
            }
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry
                .map_err(|source| DataDirError::Write {
                    path: folder.clone(),
                    source,
                })?
                .path();
            std::fs::remove_file(&path).map_err(|source| DataDirError::Write { path, source })?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Creates the store, a root key and a signing key, root metadata version 1 signed by
    /// the root key, and one operator and one read-only admin token.
    pub fn init(&self, now: i64) -> Result<InitOutcome, DataDirError> {
        if self.database().exists() {
            return Err(DataDirError::AlreadyInitialized(self.root.clone()));
        }
        for folder in [self.keys(), self.artifacts()] {
            std::fs::create_dir_all(&folder).map_err(|source| DataDirError::Write {
                path: folder.clone(),
                source,
            })?;
        }
        let root_key = SigningKey::generate()?;
        let signing_key = SigningKey::generate()?;
        write_secret(&self.root_key(), &root_key.to_hex())?;
        write_secret(&self.signing_key(), &signing_key.to_hex())?;
        let store = SqliteStore::open(&self.database())?;
        let root = RootMetadata {
            version: 1,
            expires: now + ROOT_LIFETIME_SECONDS,
            root_keys: vec![root_key.public_key()],
            root_threshold: 1,
            signing_keys: vec![signing_key.public_key()],
            signing_threshold: 1,
        };
        let envelope = sign_envelope(
            ROOT_PAYLOAD_TYPE,
            serde_json::to_string(&root).expect("root serializes"),
            &[&root_key],
        );
        store.insert_root(
            1,
            &serde_json::to_string(&envelope).expect("envelope serializes"),
        )?;
        let operator_token = new_token("flo_op")?;
        let read_token = new_token("flo_ro")?;
        store.insert_admin_token(
            &token_hash(&operator_token),
            Scope::Operator,
            "init-operator",
            now,
        )?;
        store.insert_admin_token(&token_hash(&read_token), Scope::Read, "init-read", now)?;
        store.audit(
            now,
            "flotilla-hub init",
            "hub.init",
            &format!("root key {}", root_key.key_id()),
        )?;
        Ok(InitOutcome {
            operator_token,
            read_token,
            root_key_id: root_key.key_id(),
        })
    }

    pub fn open_store(&self) -> Result<SqliteStore, DataDirError> {
        if !self.database().exists() {
            return Err(DataDirError::NotInitialized(self.root.clone()));
        }
        Ok(SqliteStore::open(&self.database())?)
    }

    pub fn load_signing_key(&self) -> Result<SigningKey, DataDirError> {
        read_key(&self.signing_key())
    }

    /// The root key, when it is kept on the hub.
    pub fn load_root_key(&self, from: Option<&Path>) -> Result<SigningKey, DataDirError> {
        let path = from
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root_key());
        if !path.exists() {
            return Err(DataDirError::RootKeyOffline);
        }
        read_key(&path)
    }

    /// Writes a new signing key in place of the old one, which is kept as `signing.key.old`.
    pub fn replace_signing_key(&self, key: &SigningKey) -> Result<(), DataDirError> {
        let old = self.keys().join("signing.key.old");
        std::fs::rename(self.signing_key(), &old)
            .map_err(|source| DataDirError::Write { path: old, source })?;
        write_secret(&self.signing_key(), &key.to_hex())
    }

    /// Copies the root key to `out` (mode 0600), and with `remove` deletes it from the hub so
    /// it can be kept offline.
    pub fn export_root_key(&self, out: &Path, remove: bool) -> Result<(), DataDirError> {
        let key = self.load_root_key(None)?;
        write_secret(out, &key.to_hex())?;
        if remove {
            std::fs::remove_file(self.root_key()).map_err(|source| DataDirError::Write {
                path: self.root_key(),
                source,
            })?;
        }
        Ok(())
    }
}

fn read_key(path: &Path) -> Result<SigningKey, DataDirError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataDirError::Key {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    SigningKey::from_hex(&text).map_err(|e| DataDirError::Key {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes a secret with mode 0600 through a temporary file, fsynced, then renamed.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), DataDirError> {
    write_replacing_with_mode(path, text.as_bytes(), 0o600)
}

/// Replaces a file readable by all (mode 0644) through a temporary file, fsynced, then
/// renamed: a reader sees the old contents or the new, never part.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    write_replacing_with_mode(path, bytes, 0o644)
}

fn write_replacing_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let error = |source| DataDirError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(error)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    file.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

/// A new random token with a readable prefix (so a leaked token is recognisable).
pub fn new_token(prefix: &str) -> Result<String, DataDirError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| {
        DataDirError::Signing(flotilla_common::signing::SigningError::Randomness(
            e.to_string(),
        ))
    })?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

/// Tokens are stored only as hashes.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
