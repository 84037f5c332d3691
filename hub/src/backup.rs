//! `flotilla-hub backup OUT` and `flotilla-hub restore BACKUP`: a consistent copy of a hub's
//! data folder, taken while the hub runs, and bringing it back into an empty folder.
//!
//! Consistency: each SQLite file is copied by `VACUUM INTO`, one read transaction, so it is
//! a state the database was in (WAL included), whatever the running hub writes meanwhile.
//! The keys are read before and after the databases and the copy is retried if they changed
//! (a rotation under way). Artifacts are copied after the databases: the hub stores a file
//! before the row naming it, so every artifact the copied registry names is there (files
//! newer than the copy are harmless extras). The backup is written to a temporary folder
//! renamed into place at the end, so OUT is whole or absent; `backup.json` lists every file
//! with its SHA-256, which restore checks before writing anything.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's name in a backup folder.
pub const MANIFEST: &str = "backup.json";
/// SQLite files of a data folder, copied by `VACUUM INTO`; hub.db last on restore, as the
/// mark of a whole hub.
const DATABASES: [&str; 2] = ["telemetry.db", "hub.db"];
/// Folders copied file by file.
const FOLDERS: [&str; 2] = ["keys", "artifacts"];
/// Other files copied when present.
const FILES: [&str; 1] = ["hub.toml"];
/// Attempts when the keys change under the copy.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot copy {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{0} is not a hub's data folder (no hub.db): give the folder flotilla-hub init made")]
    NotAHub(PathBuf),
    #[error("{0} already exists and is not empty: back up into a new folder")]
    OutExists(PathBuf),
    #[error("{0} already holds a hub (hub.db): restore into an empty folder")]
    TargetHoldsAHub(PathBuf),
    #[error("{0} is not a Flotilla backup (no readable backup.json): {1}")]
    NotABackup(PathBuf, String),
    #[error("the backup is damaged: {0}; nothing was restored")]
    Damaged(String),
    #[error("the keys kept changing during the backup (a rotation under way?); try again")]
    KeysKeptChanging,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a backup holds: every file (relative path, `/`-separated) with its size and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Unix seconds when it was taken.
    pub made_at: i64,
    /// The flotilla-hub version that made it.
    pub hub_version: String,
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
}

/// Copies `data_dir` of a (possibly running) hub into the new folder `out`.
pub fn backup(data_dir: &Path, out: &Path, now: i64) -> Result<Manifest, BackupError> {
    if !data_dir.join("hub.db").is_file() {
        return Err(BackupError::NotAHub(data_dir.to_owned()));
    }
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(BackupError::OutExists(out.to_owned()));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let partial = tempfile::Builder::new()
        .prefix(".flotilla-backup-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    for attempt in 1..=ATTEMPTS {
        let keys_before = read_folder(&data_dir.join("keys"))?;
        for database in DATABASES {
            let source = data_dir.join(database);
            if source.is_file() {
                let target = partial.path().join(database);
                let _ = std::fs::remove_file(&target);
                vacuum_into(&source, &target)?;
            }
        }
        if read_folder(&data_dir.join("keys"))? == keys_before {
            break;
        }
        if attempt == ATTEMPTS {
            return Err(BackupError::KeysKeptChanging);
        }
    }
    for folder in FOLDERS {
        copy_tree(&data_dir.join(folder), &partial.path().join(folder))?;
    }
    for file in FILES {
        let source = data_dir.join(file);
        if source.is_file() {
            copy_file(&source, &partial.path().join(file))?;
        }
    }
    let manifest = Manifest {
        format: 1,
        made_at: now,
        hub_version: env!("CARGO_PKG_VERSION").to_owned(),
        files: hash_tree(partial.path())?,
    };
    let manifest_path = partial.path().join(MANIFEST);
    let mut file = std::fs::File::create(&manifest_path).map_err(io(&manifest_path))?;
    file.write_all(&serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"))
        .and_then(|_| file.sync_all())
        .map_err(io(&manifest_path))?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    let partial = partial.keep();
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(manifest)
}

/// Brings the backup `from` into `data_dir` (missing or empty), after checking every file
/// against the manifest. hub.db is written last, so a restore cut short leaves no hub and
/// can simply be run again.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    let manifest_path = from.join(MANIFEST);
    let manifest: Manifest = std::fs::read(&manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|reason| BackupError::NotABackup(from.to_owned(), reason))?;
    if data_dir.join("hub.db").exists() {
        return Err(BackupError::TargetHoldsAHub(data_dir.to_owned()));
    }
    let found = hash_tree(from)?;
    for (name, entry) in &manifest.files {
        if !is_safe_relative(name) {
            return Err(BackupError::Damaged(format!("the manifest names {name:?}")));
        }
        match found.get(name) {
            None => return Err(BackupError::Damaged(format!("{name} is missing"))),
            Some(actual) if actual != entry => {
                return Err(BackupError::Damaged(format!(
                    "{name} does not match its SHA-256 in backup.json"
                )));
            }
            Some(_) => {}
        }
    }
    if !manifest.files.contains_key("hub.db") {
        return Err(BackupError::Damaged("it holds no hub.db".to_owned()));
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let mut names: Vec<&String> = manifest.files.keys().collect();
    // hub.db last: its presence means the restore finished.
    names.sort_by_key(|name| name.as_str() == "hub.db");
    for name in names {
        copy_file(&from.join(name), &data_dir.join(name))?;
    }
    restrict(&data_dir.join("keys"))?;
    Ok(manifest)
}

/// Names a manifest may hold: relative, no `..`, no absolute parts.
fn is_safe_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn vacuum_into(source: &Path, target: &Path) -> Result<(), BackupError> {
    let sqlite = |e| BackupError::Sqlite {
        path: source.to_owned(),
        source: e,
    };
    let connection = rusqlite::Connection::open_with_flags(source, rusqlite::OpenFlags::default())
        .map_err(sqlite)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sqlite)?;
    connection
        .execute("VACUUM INTO ?1", [target.to_string_lossy()])
        .map_err(sqlite)?;
    Ok(())
}

/// Every file under `folder` (absent: none) by relative path, with its bytes.
fn read_folder(folder: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>, BackupError> {
    let mut files = BTreeMap::new();
    for path in files_under(folder)? {
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        files.insert(path, bytes);
    }
    Ok(files)
}

fn files_under(folder: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut files = Vec::new();
    if !folder.exists() {
        return Ok(files);
    }
    let mut pending = vec![folder.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BackupError> {
    for path in files_under(from)? {
        let relative = path.strip_prefix(from).expect("under its folder");
        copy_file(&path, &to.join(relative))?;
    }
    Ok(())
}

/// Copies keeping the permission bits, through a temporary name and a rename, synced.
fn copy_file(from: &Path, to: &Path) -> Result<(), BackupError> {
    let folder = to.parent().expect("a file has a folder");
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let temporary = to.with_extension("restoring");
    std::fs::copy(from, &temporary).map_err(io(from))?;
    std::fs::File::open(&temporary)
        .and_then(|f| f.sync_all())
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, to).map_err(io(to))
}

fn restrict(keys: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    if !keys.exists() {
        return Ok(());
    }
    std::fs::set_permissions(keys, std::fs::Permissions::from_mode(0o700)).map_err(io(keys))?;
    for path in files_under(keys)? {
        let mode = if path.extension().is_some_and(|e| e == "key" || e == "old") {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io(&path))?;
    }
    Ok(())
}

fn hash_tree(root: &Path) -> Result<BTreeMap<String, FileEntry>, BackupError> {
    let mut files = BTreeMap::new();
    for path in files_under(root)? {
        let relative = path.strip_prefix(root).expect("under its folder");
        let name = relative.to_string_lossy().replace('\\', "/");
        if name == MANIFEST {
            continue;
        }
        let mut file = std::fs::File::open(&path).map_err(io(&path))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buffer).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buffer[..n]);
        }
        files.insert(
            name,
            FileEntry {
                size,
                sha256: hex::encode(hasher.finalize()),
            },
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let db = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
        db.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/root.key"), "secret").unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts/sha256/ab")).unwrap();
        std::fs::write(
            dir.path().join("artifacts/sha256/ab/abcd"),
            vec![7u8; 100_000],
        )
        .unwrap();
        std::fs::write(dir.path().join("hub.toml"), "listen = \"127.0.0.1:1\"\n").unwrap();
        // Held open: the WAL has rows the main file does not yet.
        std::mem::forget(db);
        dir
    }

    #[test]
    fn a_backup_restores_into_an_empty_folder_with_the_same_contents() {
        let hub = hub_folder();
        let out = tempfile::tempdir().unwrap();
        let backup_dir = out.path().join("b1");
        let manifest = backup(hub.path(), &backup_dir, 42).unwrap();
        assert_eq!(manifest.made_at, 42);
        assert!(manifest.files.contains_key("keys/root.key"));
        assert!(manifest.files.contains_key("artifacts/sha256/ab/abcd"));
        let restored = out.path().join("restored");
        restore(&backup_dir, &restored).unwrap();
        let db = rusqlite::Connection::open(restored.join("hub.db")).unwrap();
        let count: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            std::fs::read(restored.join("artifacts/sha256/ab/abcd")).unwrap(),
            vec![7u8; 100_000]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(restored.join("keys/root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Not over a hub, and not into a used backup folder.
        assert!(matches!(
            restore(&backup_dir, &restored),
            Err(BackupError::TargetHoldsAHub(_))
        ));
        assert!(matches!(
            backup(hub.path(), &backup_dir, 43),
            Err(BackupError::OutExists(_))
        ));
        assert!(matches!(
            backup(out.path(), &out.path().join("b2"), 43),
            Err(BackupError::NotAHub(_))
        ));
    }

    #[test]
    fn a_damaged_backup_restores_nothing() {
        let hub = hub_folder();
        let out = tempfile::tempdir().unwrap();
        let backup_dir = out.path().join("b");
        backup(hub.path(), &backup_dir, 1).unwrap();
        std::fs::write(backup_dir.join("artifacts/sha256/ab/abcd"), b"tampered").unwrap();
        let target = out.path().join("restored");
        let error = restore(&backup_dir, &target).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("artifacts/sha256/ab/abcd does not match"),
            "{error}"
        );
        assert!(!target.exists());
        std::fs::remove_file(backup_dir.join("artifacts/sha256/ab/abcd")).unwrap();
        assert!(
            restore(&backup_dir, &target)
                .unwrap_err()
                .to_string()
                .contains("is missing")
        );
        let manifest = backup_dir.join(MANIFEST);
        let mut bad: Manifest = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        bad.files.insert(
            "../escape".into(),
            FileEntry {
                size: 0,
                sha256: String::new(),
            },
        );
        std::fs::write(&manifest, serde_json::to_vec(&bad).unwrap()).unwrap();
        assert!(
            restore(&backup_dir, &target)
                .unwrap_err()
                .to_string()
                .contains("names \"../escape\"")
        );
        std::fs::write(&manifest, b"{").unwrap();
        assert!(matches!(
            restore(&backup_dir, &target),
            Err(BackupError::NotABackup(..))
        ));
        assert!(!target.exists());
    }
}
