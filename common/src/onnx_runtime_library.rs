//! Finds the ONNX Runtime shared library. Flotilla loads it at run time (ort's `load-dynamic`)
//! because prebuilt downloads are not allowed everywhere it runs; `deploy/fetch-onnxruntime.sh`
//! takes the library from the `onnxruntime` wheel on PyPI.
//!
//! Order: an explicit path (flag or config), then `ORT_DYLIB_PATH`, then default places:
//! beside the executable (and `../lib/flotilla` from it), the repository cache
//! `.cache/onnxruntime/` in any folder above the executable or the working directory, and
//! `/usr/local/lib/flotilla`, `/usr/lib/flotilla`. An explicit path or the environment variable
//! that names a missing file is an error, not a reason to look elsewhere: the user asked for it.

use std::path::{Path, PathBuf};

/// The file name of the ONNX Runtime release Flotilla is built and tested against.
pub const LIBRARY_FILE_NAME: &str = "libonnxruntime.so.1.31.1";
/// The environment variable ort itself also reads.
pub const ENV_VAR: &str = "ORT_DYLIB_PATH";

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LocateError {
    #[error(
        "ONNX Runtime library {path} given by {given_by} does not exist; run deploy/fetch-onnxruntime.sh, which prints the path to use"
    )]
    Missing {
        path: PathBuf,
        given_by: &'static str,
    },
    #[error(
        "ONNX Runtime library {LIBRARY_FILE_NAME} not found (looked in {looked_in}); run deploy/fetch-onnxruntime.sh, then pass --ort-lib PATH or set {ENV_VAR}=PATH"
    )]
    NotFound { looked_in: String },
}

/// Where to look, given the process's facts; separated from the file system for testing.
#[derive(Debug, Clone)]
pub struct SearchContext {
    pub explicit: Option<PathBuf>,
    pub env_value: Option<PathBuf>,
    pub executable: Option<PathBuf>,
    pub working_dir: Option<PathBuf>,
}

impl SearchContext {
    /// The context of the running process.
    pub fn from_process(explicit: Option<PathBuf>) -> SearchContext {
        SearchContext {
            explicit,
            env_value: std::env::var_os(ENV_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            executable: std::env::current_exe().ok(),
            working_dir: std::env::current_dir().ok(),
        }
    }

    /// Default places in the order they are tried.
    pub fn default_candidates(&self) -> Vec<PathBuf> {
        let mut candidates = Vec::new();
        if let Some(dir) = self.executable.as_deref().and_then(Path::parent) {
            candidates.push(dir.join(LIBRARY_FILE_NAME));
            candidates.push(dir.join("../lib/flotilla").join(LIBRARY_FILE_NAME));
        }
        for start in [
            self.executable.as_deref().and_then(Path::parent),
            self.working_dir.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            for dir in start.ancestors() {
                candidates.push(dir.join(".cache/onnxruntime").join(LIBRARY_FILE_NAME));
            }
        }
        candidates.push(Path::new("/usr/local/lib/flotilla").join(LIBRARY_FILE_NAME));
        candidates.push(Path::new("/usr/lib/flotilla").join(LIBRARY_FILE_NAME));
        candidates.dedup();
        candidates
    }
}

/// Picks the library path; `exists` is the file-system check (`Path::is_file` in production).
pub fn locate(
    context: &SearchContext,
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf, LocateError> {
    for (given, given_by) in [
        (&context.explicit, "--ort-lib or the config file"),
        (&context.env_value, ENV_VAR),
    ] {
        if let Some(path) = given {
            return if exists(path) {
                Ok(path.clone())
            } else {
                Err(LocateError::Missing {
                    path: path.clone(),
                    given_by,
                })
            };
        }
    }
    let candidates = context.default_candidates();
    candidates
        .iter()
        .find(|path| exists(path))
        .cloned()
        .ok_or_else(|| LocateError::NotFound {
            looked_in: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SearchContext {
        SearchContext {
            explicit: None,
            env_value: None,
            executable: Some(PathBuf::from("/repo/target/release/flotilla-agent")),
            working_dir: Some(PathBuf::from("/home/me")),
        }
    }

    #[test]
    fn explicit_beats_environment_and_a_missing_one_is_an_error() {
        let mut ctx = context();
        ctx.explicit = Some("/opt/ort.so".into());
        ctx.env_value = Some("/env/ort.so".into());
        assert_eq!(locate(&ctx, |_| true), Ok(PathBuf::from("/opt/ort.so")));
        let err = locate(&ctx, |p| p == Path::new("/env/ort.so")).unwrap_err();
        assert!(
            err.to_string().contains("/opt/ort.so given by --ort-lib"),
            "{err}"
        );
        ctx.explicit = None;
        assert_eq!(locate(&ctx, |_| true), Ok(PathBuf::from("/env/ort.so")));
    }

    #[test]
    fn finds_the_repository_cache_above_the_executable() {
        let cache = PathBuf::from("/repo/.cache/onnxruntime").join(LIBRARY_FILE_NAME);
        assert_eq!(locate(&context(), |p| p == cache), Ok(cache.clone()));
        let beside = PathBuf::from("/repo/target/release").join(LIBRARY_FILE_NAME);
        assert_eq!(
            locate(&context(), |p| p == cache || p == beside),
            Ok(beside)
        );
    }

    #[test]
    fn not_found_says_where_it_looked_and_what_to_do() {
        let message = locate(&context(), |_| false).unwrap_err().to_string();
        assert!(message.contains("/home/me/.cache/onnxruntime"), "{message}");
        assert!(
            message.contains("deploy/fetch-onnxruntime.sh") && message.contains("ORT_DYLIB_PATH"),
            "{message}"
        );
    }
}
