//! Where installed models and downloads live in the state folder, and putting files there
//! so a crash at any instant leaves either the old state or the new one: a version folder
//! appears whole or not at all (staged beside, fsynced, renamed), and so does its feature
//! map. The decisions of what to keep and what to delete are `install.rs`'s.

use std::path::{Path, PathBuf};

use flotilla_proto::telemetry::FeatureMap;

use crate::repository::VERSION_FILE_NAME;

/// The folders installs write to.
#[derive(Debug, Clone)]
pub struct InstallFolders {
    /// `MODEL/VERSION/model.onnx`, where the repository loads from.
    pub models: PathBuf,
    /// Partial and finished downloads, named by artifact hash; emptied after each install.
    pub downloads: PathBuf,
}

impl InstallFolders {
    pub fn model_folder(&self, model: &str) -> PathBuf {
        self.models.join(model)
    }

    pub fn version_folder(&self, model: &str, version: u64) -> PathBuf {
        self.model_folder(model).join(version.to_string())
    }

    pub fn installed_file(&self, model: &str, version: u64) -> PathBuf {
        self.version_folder(model, version).join(VERSION_FILE_NAME)
    }

    /// The raw artifact being downloaded (or decoded into).
    pub fn download_part(&self, sha256: &str) -> PathBuf {
        self.downloads.join(format!("{sha256}.part"))
    }

    /// A compressed form of the artifact being downloaded, by its label.
    pub fn form_part(&self, sha256: &str, form_label: &str) -> PathBuf {
        self.downloads.join(format!("{sha256}.{form_label}.part"))
    }

    /// The names of what a model's folder holds (version folders and anything else).
    pub fn model_folder_entries(&self, model: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.model_folder(model)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect()
    }

    /// Deletes entries of a model's folder, as far as it can: what stays is unloaded by the
    /// next clean-up.
    pub fn remove_model_folder_entries(&self, model: &str, names: &[&str]) {
        for name in names {
            let _ = std::fs::remove_dir_all(self.model_folder(model).join(name));
        }
    }

    pub fn remove_version(&self, model: &str, version: u64) {
        let _ = std::fs::remove_dir_all(self.version_folder(model, version));
    }

    pub fn discard_download(&self, sha256: &str) {
        let _ = std::fs::remove_file(self.download_part(sha256));
    }

    /// Empties the downloads folder: after an install nothing there is needed any more.
    pub fn clear_downloads(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.downloads) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The hex SHA-256 of a file, if it can be read.
pub fn file_sha256_if_readable(path: &Path) -> Option<String> {
    crate::transport::http::file_sha256(path)
        .ok()
        .map(|(sha256, _)| sha256)
}

/// Writes the version's feature map from its signed manifest beside the model file, where
/// the loader looks for it; written beside and renamed, so it is whole or absent.
pub fn write_feature_map(model_file: &Path, features: Option<&FeatureMap>) -> std::io::Result<()> {
    let Some(features) = features else {
        return Ok(());
    };
    let path = flotilla_runtime::feature_map_path(model_file);
    let folder = path.parent().expect("model files have a folder");
    let mut file = tempfile::NamedTempFile::new_in(folder)?;
    std::io::Write::write_all(
        &mut file,
        &serde_json::to_vec(features).expect("feature maps serialize"),
    )?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// Moves a verified download into its version folder: staged in a folder beside, fsynced,
/// renamed, so a version folder appears whole or not at all (the repository loads whatever
/// is there).
pub fn place_verified(
    part: &Path,
    version_folder: &Path,
    features: Option<&FeatureMap>,
) -> std::io::Result<()> {
    let model_folder = version_folder
        .parent()
        .expect("version folders have a model folder");
    std::fs::create_dir_all(model_folder)?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(model_folder)?;
    let file = staging.path().join(VERSION_FILE_NAME);
    std::fs::rename(part, &file)?;
    std::fs::File::open(&file)?.sync_all()?;
    write_feature_map(&file, features)?;
    if version_folder.exists() {
        std::fs::remove_dir_all(version_folder)?;
    }
    let staging = staging.keep();
    std::fs::rename(&staging, version_folder)?;
    std::fs::File::open(model_folder)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use flotilla_proto::telemetry::FeatureMap;

    use super::*;

    fn folders(root: &Path) -> InstallFolders {
        InstallFolders {
            models: root.join("models"),
            downloads: root.join("downloads"),
        }
    }

    fn feature_map() -> FeatureMap {
        FeatureMap {
            input: "x".into(),
            features: vec!["sepal_length".into(), "petal_length".into()],
            categorical: vec![],
            predictions: vec![],
        }
    }

    #[test]
    fn a_verified_download_becomes_a_whole_version_folder_with_its_feature_map() {
        let dir = tempfile::tempdir().unwrap();
        let folders = folders(dir.path());
        std::fs::create_dir_all(&folders.downloads).unwrap();
        let part = folders.download_part("ab");
        std::fs::write(&part, b"model bytes").unwrap();
        let target = folders.version_folder("iris", 2);
        // A leftover of an earlier attempt is replaced, not merged.
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("stale"), b"old").unwrap();

        place_verified(&part, &target, Some(&feature_map())).unwrap();

        let installed = folders.installed_file("iris", 2);
        assert_eq!(std::fs::read(&installed).unwrap(), b"model bytes");
        assert!(!part.exists(), "the download moved, not copied");
        assert!(!target.join("stale").exists());
        let written: FeatureMap = serde_json::from_slice(
            &std::fs::read(flotilla_runtime::feature_map_path(&installed)).unwrap(),
        )
        .unwrap();
        assert_eq!(written, feature_map());
        assert_eq!(
            folders.model_folder_entries("iris"),
            ["2"],
            "no staging folder is left behind"
        );
        assert_eq!(
            file_sha256_if_readable(&installed),
            Some(crate::transport::http::file_sha256(&installed).unwrap().0)
        );
        assert_eq!(file_sha256_if_readable(&dir.path().join("missing")), None);
    }

    #[test]
    fn without_a_feature_map_only_the_model_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let folders = folders(dir.path());
        std::fs::create_dir_all(&folders.downloads).unwrap();
        let part = folders.download_part("cd");
        std::fs::write(&part, b"m").unwrap();
        place_verified(&part, &folders.version_folder("iris", 1), None).unwrap();
        let installed = folders.installed_file("iris", 1);
        write_feature_map(&installed, None).unwrap();
        assert!(!flotilla_runtime::feature_map_path(&installed).exists());
        assert_eq!(
            std::fs::read_dir(folders.version_folder("iris", 1))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn clean_ups_remove_what_they_are_told_and_empty_the_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let folders = folders(dir.path());
        for version in 1..=3 {
            std::fs::create_dir_all(folders.version_folder("iris", version)).unwrap();
        }
        std::fs::create_dir_all(&folders.downloads).unwrap();
        std::fs::write(folders.download_part("ab"), b"x").unwrap();
        std::fs::write(folders.form_part("ab", "zstd"), b"y").unwrap();

        folders.remove_model_folder_entries("iris", &["1"]);
        folders.remove_version("iris", 3);
        let mut left = folders.model_folder_entries("iris");
        left.sort();
        assert_eq!(left, ["2"]);

        folders.discard_download("ab");
        assert!(!folders.download_part("ab").exists());
        assert!(folders.form_part("ab", "zstd").exists());
        folders.clear_downloads();
        assert_eq!(std::fs::read_dir(&folders.downloads).unwrap().count(), 0);
        assert!(folders.model_folder_entries("absent").is_empty());
    }
}
