//! Reads a TOML config file into a binary's config struct, with errors that name the file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Parses `path` as TOML into `T`. Unknown keys are refused when `T` denies them, which every
/// Flotilla config struct does, so a typo is an error rather than a silently ignored setting.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "name = \"a\"\nnmae = \"typo\"\n").unwrap();
        let message = load_toml::<Sample>(&path).unwrap_err().to_string();
        assert!(
            message.contains("agent.toml") && message.contains("nmae"),
            "{message}"
        );
        let message = load_toml::<Sample>(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("cannot read config file") && message.contains("missing.toml"),
            "{message}"
        );
    }
}
