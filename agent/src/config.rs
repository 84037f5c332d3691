//! The `serve` configuration: a TOML file (`--config`), overridden by command-line flags.
//! Each field's doc comment is its user documentation (docs/agent.md repeats them).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use flotilla_runtime::SessionSettings;

/// `flotilla-agent serve` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Unix socket to serve the Open Inference Protocol on, e.g. "/run/flotilla/agent.sock".
    /// Relative paths in a config file are relative to the file's folder.
    /// Its folder must exist. A stale socket file left by a crashed agent is replaced; any
    /// other existing file is refused.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file, in octal: "0660" lets the owner and group connect.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Loopback TCP address to serve on as well, e.g. "127.0.0.1:8000" (port 0 picks a free
    /// port). Only loopback addresses are accepted: the local service has no authentication.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Path of libonnxruntime.so.1.31.1; when absent, ORT_DYLIB_PATH, then default places.
    #[serde(default)]
    pub ort_lib: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger requests get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How often model folders are checked for new or changed versions, in milliseconds; 0
    /// turns polling off (SIGHUP and POST /v2/repository/models/NAME/load still reload).
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish, in milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// The models to serve.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

/// One served model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use in /v2/models/NAME.
    pub name: String,
    /// A model file (served as version 1), or a folder of numbered version folders
    /// (DIR/1/model.onnx, DIR/2/model.onnx, ...) whose highest version is the default.
    pub path: PathBuf,
    /// Sessions for this model: how many of its requests run at once.
    /// Default: the number of CPU cores.
    #[serde(default)]
    pub sessions: Option<usize>,
    /// ONNX Runtime threads inside one request. Default 1.
    #[serde(default)]
    pub intra_op_threads: Option<usize>,
    /// Requests that may wait for a free session before more are refused with 503.
    #[serde(default)]
    pub queue_depth: Option<usize>,
    /// What runs requests: own ONNX Runtime sessions unless an embedder (fleet-sim) says
    /// otherwise; not settable from the file.
    #[serde(skip)]
    pub engine: flotilla_runtime::Engine,
}

fn default_socket_mode() -> String {
    "0660".to_owned()
}
fn default_max_body_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_watch_interval_ms() -> u64 {
    2000
}
fn default_shutdown_grace_ms() -> u64 {
    30_000
}
pub fn default_sessions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
pub const DEFAULT_QUEUE_DEPTH: usize = 256;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            socket: None,
            socket_mode: default_socket_mode(),
            http: None,
            ort_lib: None,
            max_body_bytes: default_max_body_bytes(),
            watch_interval_ms: default_watch_interval_ms(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            models: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "no listener: give --socket PATH and/or --http 127.0.0.1:PORT (or socket/http in the config file)"
    )]
    NoListener,
    #[error("no model to serve: give --model NAME=PATH (or [[models]] in the config file)")]
    NoModel,
    #[error("--model {0:?} is not NAME=PATH")]
    ModelFlag(String),
    #[error("model name {0:?} is not allowed: use letters, digits, '-', '_' and '.'")]
    ModelName(String),
    #[error("model {0:?} is configured twice")]
    DuplicateModel(String),
    #[error(
        "http address {0} is not a loopback address; the local inference service has no authentication, so it listens on 127.0.0.0/8 or [::1] only"
    )]
    NotLoopback(SocketAddr),
    #[error("socket_mode {0:?} is not an octal permission such as \"0660\"")]
    SocketMode(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl ServeConfig {
    /// Resolves relative paths in a config file against the file's folder, so a config
    /// means the same whatever the working directory of the agent.
    pub fn relative_to(mut self, folder: &std::path::Path) -> ServeConfig {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        };
        self.socket.as_mut().map(resolve);
        self.ort_lib.as_mut().map(resolve);
        self.models.iter_mut().for_each(|m| resolve(&mut m.path));
        self
    }

    /// Checks what serde cannot: listeners, names, addresses, modes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.socket.is_none() && self.http.is_none() {
            return Err(ConfigError::NoListener);
        }
        if self.models.is_empty() {
            return Err(ConfigError::NoModel);
        }
        if let Some(address) = self.http
            && !address.ip().is_loopback()
        {
            return Err(ConfigError::NotLoopback(address));
        }
        self.socket_permissions()?;
        for (index, model) in self.models.iter().enumerate() {
            let valid = !model.name.is_empty()
                && model
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !model.name.starts_with('.');
            if !valid {
                return Err(ConfigError::ModelName(model.name.clone()));
            }
            if self.models[..index].iter().any(|m| m.name == model.name) {
                return Err(ConfigError::DuplicateModel(model.name.clone()));
            }
            for (field, value) in [
                ("sessions", model.sessions),
                ("intra_op_threads", model.intra_op_threads),
                ("queue_depth", model.queue_depth),
            ] {
                if value == Some(0) {
                    return Err(ConfigError::Zero(field));
                }
            }
        }
        Ok(())
    }

    pub fn socket_permissions(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| ConfigError::SocketMode(self.socket_mode.clone()))
    }
}

impl ModelConfig {
    /// Parses a `--model NAME=PATH` flag.
    pub fn from_flag(flag: &str) -> Result<ModelConfig, ConfigError> {
        match flag.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(ModelConfig {
                name: name.to_owned(),
                path: PathBuf::from(path),
                sessions: None,
                intra_op_threads: None,
                queue_depth: None,
                engine: Default::default(),
            }),
            _ => Err(ConfigError::ModelFlag(flag.to_owned())),
        }
    }

    pub fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            sessions: self.sessions.unwrap_or_else(default_sessions),
            intra_op_threads: self.intra_op_threads.unwrap_or(1),
            queue_depth: self.queue_depth.unwrap_or(DEFAULT_QUEUE_DEPTH),
            engine: self.engine.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(models: &[&str]) -> ServeConfig {
        ServeConfig {
            socket: Some("/tmp/a.sock".into()),
            models: models
                .iter()
                .map(|m| ModelConfig::from_flag(m).unwrap())
                .collect(),
            ..ServeConfig::default()
        }
    }

    #[test]
    fn a_full_config_file_parses() {
        let text = r#"
            socket = "/run/flotilla/agent.sock"
            socket_mode = "0600"
            http = "127.0.0.1:8000"
            max_body_bytes = 1024
            [[models]]
            name = "iris"
            path = "models/iris"
            sessions = 2
            intra_op_threads = 1
            queue_depth = 16
        "#;
        let config: ServeConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.socket_permissions(), Ok(0o600));
        assert_eq!(
            config.models[0].session_settings(),
            SessionSettings {
                sessions: 2,
                intra_op_threads: 1,
                queue_depth: 16,
                engine: flotilla_runtime::Engine::Onnx,
            }
        );
        assert!(toml::from_str::<ServeConfig>("sockett = \"x\"").is_err());
        let resolved = config.relative_to(std::path::Path::new("/etc/flotilla"));
        assert_eq!(
            resolved.models[0].path,
            PathBuf::from("/etc/flotilla/models/iris")
        );
        assert_eq!(
            resolved.socket,
            Some(PathBuf::from("/run/flotilla/agent.sock"))
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(
            ModelConfig::from_flag("iris"),
            Err(ConfigError::ModelFlag("iris".into()))
        );
        assert_eq!(
            config_with(&["a/b=x.onnx"]).validate(),
            Err(ConfigError::ModelName("a/b".into()))
        );
        assert_eq!(
            config_with(&["a=x", "a=y"]).validate(),
            Err(ConfigError::DuplicateModel("a".into()))
        );
        assert_eq!(config_with(&[]).validate(), Err(ConfigError::NoModel));
        let mut config = config_with(&["a=x"]);
        config.http = Some("0.0.0.0:80".parse().unwrap());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::NotLoopback(_))
        ));
        config.http = None;
        config.socket = None;
        assert_eq!(config.validate(), Err(ConfigError::NoListener));
        let mut config = config_with(&["a=x"]);
        config.socket_mode = "rw".into();
        assert!(matches!(config.validate(), Err(ConfigError::SocketMode(_))));
    }
}
