//! The agent's settings: one TOML file (`--config`) that `serve` and `run` both load, with
//! `serve`'s flags applied over it. Each field's doc comment is its user documentation
//! (docs/agent.md repeats them). Local serving settings mean the same in both commands;
//! a file that sets a key the command cannot use is refused with the key named, like a typo,
//! rather than silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flotilla_common::config_file::ConfigFileError;
use serde::{Deserialize, Serialize};

use flotilla_runtime::SessionSettings;

use crate::sync::InjectedFaults;
use crate::telemetry::TelemetryConfig;

/// The two commands that read an agent config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCommand {
    /// `flotilla-agent serve`: the models in the file and flags, nothing else.
    Serve,
    /// `flotilla-agent run`: follow a hub and serve what it installs.
    Run,
}

impl AgentCommand {
    pub fn name(self) -> &'static str {
        match self {
            AgentCommand::Serve => "serve",
            AgentCommand::Run => "run",
        }
    }

    /// The keys of the file only the other command uses.
    pub fn refused_keys(self) -> &'static [&'static str] {
        match self {
            AgentCommand::Serve => RUN_ONLY_KEYS,
            AgentCommand::Run => SERVE_ONLY_KEYS,
        }
    }
}

/// Keys both commands use.
pub const SHARED_KEYS: &[&str] = &[
    "socket",
    "socket_mode",
    "http",
    "ort_lib",
    "max_body_bytes",
    "max_connections",
    "shutdown_grace_ms",
    "sessions",
    "intra_op_threads",
    "queue_depth",
];
/// Keys only `serve` uses: `run` serves the models its hub assigns, and installs reload them.
pub const SERVE_ONLY_KEYS: &[&str] = &["models", "watch_interval_ms"];
/// Keys only `run` uses: following a hub.
pub const RUN_ONLY_KEYS: &[&str] = &[
    "hub",
    "enrollment_token",
    "state_dir",
    "heartbeat_seconds",
    "mqtt",
    "hardware",
    "telemetry",
];

/// `flotilla-agent serve` and `flotilla-agent run` settings (agent.toml). Relative paths in
/// a config file are relative to the file's folder.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Unix socket to serve the Open Inference Protocol on, e.g. "/run/flotilla/agent.sock".
    /// Its folder must exist. A stale socket file left by a crashed agent is replaced; any
    /// other existing file is refused.
    /// Example: "/run/flotilla/agent.sock"
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Permission bits of the socket file, in octal: "0660" lets the owner and group connect.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Loopback TCP address to serve on as well, e.g. "127.0.0.1:8000" (port 0 picks a free
    /// port). Only loopback addresses are accepted: the local service has no authentication.
    /// Example: "127.0.0.1:8000"
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Path of libonnxruntime.so.1.31.1; when absent, ORT_DYLIB_PATH, then default places.
    /// Example: "/usr/local/lib/flotilla/libonnxruntime.so.1.31.1"
    #[serde(default)]
    pub ort_lib: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger requests get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Connections the socket and the TCP port keep open at once, together; one more is
    /// answered 503 and closed (flotilla_agent_connections_refused_total counts them).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish, in milliseconds.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Sessions per model: how many of its requests run at once. `serve`: for each of
    /// `[[models]]` that sets none; `run`: for every model the hub installs.
    /// Default: the number of CPU cores.
    /// Example: 2
    #[serde(default)]
    pub sessions: Option<usize>,
    /// ONNX Runtime threads inside one request, for each model that sets none. Default 1.
    /// Example: 1
    #[serde(default)]
    pub intra_op_threads: Option<usize>,
    /// Requests that may wait for a free session of a model before more are refused with
    /// 503, for each model that sets none. Default 256.
    /// Example: 256
    #[serde(default)]
    pub queue_depth: Option<usize>,

    /// `serve` only: how often model folders are checked for new or changed versions, in
    /// milliseconds; 0 turns polling off (SIGHUP and POST /v2/repository/models/NAME/load
    /// still reload). `run` refuses it: installs reload what they change.
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// `serve` only: the models to serve. `run` refuses them: it serves the models its
    /// hub assigns.
    #[serde(default)]
    pub models: Vec<ModelConfig>,

    /// `run` only (`serve` refuses it, as every key below): the hub's API: enrollment and
    /// artifact downloads, over TLS checked against the CA the enrollment token pins (then
    /// the CA certificate enrollment handed over), presenting the device certificate.
    /// Required by `run`.
    /// Example: "https://hub.example:7070"
    #[serde(default)]
    pub hub: Option<String>,
    /// `run` only: one-time enrollment token (flotilla enroll-token create); needed on first
    /// start only.
    /// Example: "flo_enroll_SECRET.CA_FINGERPRINT"
    #[serde(default)]
    pub enrollment_token: Option<String>,
    /// `run` only: where the agent keeps its key, state database and installed models.
    /// Required by `run`.
    /// Example: "/var/lib/flotilla-agent"
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// `run` only: seconds between heartbeats (the signed online status, which keeps the
    /// hub's "last seen" current); 0 turns them off.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// `run` only: the MQTT broker to use instead of the one the hub named at enrollment,
    /// `HOST:PORT` (a device behind a relay or port forward; fleet-sim routes cohorts
    /// through proxies). TLS or not as the hub said at enrollment; over TLS the agent trusts
    /// only the hub's CA and presents its device certificate, so the name must be one the
    /// broker's certificate carries.
    /// Example: "relay.example:8883"
    #[serde(default)]
    pub mqtt: Option<String>,
    /// `run` only: hardware facts reported at enrollment, beside the detected ones.
    #[serde(default)]
    pub hardware: BTreeMap<String, String>,
    /// `run` only: drift telemetry: window length, spool size, drain rate, data capture.
    #[serde(default)]
    pub telemetry: TelemetryConfig,

    /// What runs inference for the models the hub installs: own ONNX Runtime sessions on a
    /// device; fleet-sim shares them or declares a cost model. Not settable from the file.
    #[serde(skip)]
    pub engine: flotilla_runtime::Engine,
    /// Faults injected into installs (fleet-sim only; not settable from the file).
    #[serde(skip)]
    pub faults: InjectedFaults,
}

/// The older name of the same settings, kept for embedders (the telemetry bench).
pub type ServeConfig = AgentConfig;

/// One served model.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use in /v2/models/NAME.
    /// Example: "iris"
    pub name: String,
    /// A model file (served as version 1), or a folder of numbered version folders
    /// (DIR/1/model.onnx, DIR/2/model.onnx, ...) whose highest version is the default.
    /// Example: "models/iris"
    pub path: PathBuf,
    /// Sessions for this model: how many of its requests run at once.
    /// Default: the top-level `sessions`, else the number of CPU cores.
    /// Example: 2
    #[serde(default)]
    pub sessions: Option<usize>,
    /// ONNX Runtime threads inside one request. Default: the top-level `intra_op_threads`,
    /// else 1.
    /// Example: 1
    #[serde(default)]
    pub intra_op_threads: Option<usize>,
    /// Requests that may wait for a free session before more are refused with 503.
    /// Default: the top-level `queue_depth`, else 256.
    /// Example: 256
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
fn default_max_connections() -> usize {
    1024
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
fn default_heartbeat_seconds() -> u64 {
    30
}
pub fn default_sessions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
pub const DEFAULT_QUEUE_DEPTH: usize = 256;

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            socket: None,
            socket_mode: default_socket_mode(),
            http: None,
            ort_lib: None,
            max_body_bytes: default_max_body_bytes(),
            max_connections: default_max_connections(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            sessions: None,
            intra_op_threads: None,
            queue_depth: None,
            watch_interval_ms: default_watch_interval_ms(),
            models: Vec::new(),
            hub: None,
            enrollment_token: None,
            state_dir: None,
            heartbeat_seconds: default_heartbeat_seconds(),
            mqtt: None,
            hardware: BTreeMap::new(),
            telemetry: TelemetryConfig::default(),
            engine: flotilla_runtime::Engine::default(),
            faults: InjectedFaults::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// `error`, about the file at `path` (its text includes `error`'s, so it is not a
    /// separate source in the chain).
    #[error("{}: {error}", path.display())]
    InFile {
        path: PathBuf,
        error: Box<ConfigError>,
    },
    #[error("{}", refused_keys_message(*command, keys))]
    NotForCommand {
        command: AgentCommand,
        keys: Vec<String>,
    },
    #[error("no {key}: `flotilla-agent run` needs it, e.g. {example}")]
    MissingForRun {
        key: &'static str,
        example: &'static str,
    },
    #[error("give socket and/or http so device apps can reach the agent")]
    NoRunListener,
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

fn refused_keys_message(command: AgentCommand, keys: &[String]) -> String {
    let keys = keys.join(", ");
    match command {
        AgentCommand::Serve => format!(
            "{keys}: `flotilla-agent serve` cannot use these settings of `flotilla-agent run` (following a hub); remove them, or start `flotilla-agent run`"
        ),
        AgentCommand::Run => format!(
            "{keys}: `flotilla-agent run` cannot use these settings of `flotilla-agent serve` (it serves the models its hub assigns); remove them, or start `flotilla-agent serve`"
        ),
    }
}

impl ConfigError {
    /// The same error, saying which file it is about.
    pub fn in_file(self, path: &Path) -> ConfigError {
        ConfigError::InFile {
            path: path.to_owned(),
            error: Box::new(self),
        }
    }
}

/// The keys of a config file that `command` cannot use, in the order given.
pub fn keys_refused_by<'a>(
    command: AgentCommand,
    keys: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    keys.into_iter()
        .filter(|key| command.refused_keys().contains(key))
        .map(str::to_owned)
        .collect()
}

impl AgentConfig {
    /// Settings for `run` with everything but the hub and the state folder at its default,
    /// for embedders (fleet-sim) that build configs in code.
    pub fn for_hub(hub: impl Into<String>, state_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            hub: Some(hub.into()),
            state_dir: Some(state_dir.into()),
            ..AgentConfig::default()
        }
    }

    /// Reads `path` for `command`: unknown keys, and keys `command` cannot use, are errors
    /// naming the file; relative paths are resolved against the file's folder. Not
    /// validated yet: `serve` applies its flags first.
    pub fn load(path: &Path, command: AgentCommand) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let config: AgentConfig = toml::from_str(&text).map_err(parse_error)?;
        let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let refused = keys_refused_by(command, table.keys().map(String::as_str));
        if !refused.is_empty() {
            return Err(ConfigError::NotForCommand {
                command,
                keys: refused,
            }
            .in_file(path));
        }
        Ok(config.relative_to(path.parent().unwrap_or(Path::new("."))))
    }

    /// `run`'s config file, loaded and checked; errors name the file.
    pub fn load_for_run(path: &Path) -> Result<AgentConfig, ConfigError> {
        let config = AgentConfig::load(path, AgentCommand::Run)?;
        config
            .validate(AgentCommand::Run)
            .map_err(|e| e.in_file(path))?;
        Ok(config)
    }

    /// Resolves relative paths in a config file against the file's folder, so a config
    /// means the same whatever the working directory of the agent.
    pub fn relative_to(mut self, folder: &Path) -> AgentConfig {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        };
        self.socket.as_mut().map(resolve);
        self.ort_lib.as_mut().map(resolve);
        self.state_dir.as_mut().map(resolve);
        self.models.iter_mut().for_each(|m| resolve(&mut m.path));
        self
    }

    /// Gives each of `models` the top-level sessions, threads and queue depth it does not
    /// set itself.
    pub fn apply_model_defaults(&mut self) {
        for model in &mut self.models {
            model.sessions = model.sessions.or(self.sessions);
            model.intra_op_threads = model.intra_op_threads.or(self.intra_op_threads);
            model.queue_depth = model.queue_depth.or(self.queue_depth);
        }
    }

    /// The hub to follow and the state folder, which `run` cannot do without.
    pub fn hub_and_state_dir(&self) -> Result<(&str, &Path), ConfigError> {
        let hub = self.hub.as_deref().ok_or(ConfigError::MissingForRun {
            key: "hub",
            example: "hub = \"http://hub.example:7070\"",
        })?;
        let state_dir = self
            .state_dir
            .as_deref()
            .ok_or(ConfigError::MissingForRun {
                key: "state_dir",
                example: "state_dir = \"/var/lib/flotilla\"",
            })?;
        Ok((hub, state_dir))
    }

    /// Checks what serde cannot: for `serve` a listener and a model, for `run` the hub, the
    /// state folder and a listener; for both loopback addresses, the socket mode, names and
    /// counts.
    pub fn validate(&self, command: AgentCommand) -> Result<(), ConfigError> {
        let no_listener = self.socket.is_none() && self.http.is_none();
        match command {
            AgentCommand::Serve => {
                if no_listener {
                    return Err(ConfigError::NoListener);
                }
                if self.models.is_empty() {
                    return Err(ConfigError::NoModel);
                }
            }
            AgentCommand::Run => {
                self.hub_and_state_dir()?;
                if no_listener {
                    return Err(ConfigError::NoRunListener);
                }
            }
        }
        if let Some(address) = self.http
            && !address.ip().is_loopback()
        {
            return Err(ConfigError::NotLoopback(address));
        }
        self.socket_permissions()?;
        at_least_one(self.sessions, self.intra_op_threads, self.queue_depth)?;
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
            at_least_one(model.sessions, model.intra_op_threads, model.queue_depth)?;
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

fn at_least_one(
    sessions: Option<usize>,
    intra_op_threads: Option<usize>,
    queue_depth: Option<usize>,
) -> Result<(), ConfigError> {
    for (field, value) in [
        ("sessions", sessions),
        ("intra_op_threads", intra_op_threads),
        ("queue_depth", queue_depth),
    ] {
        if value == Some(0) {
            return Err(ConfigError::Zero(field));
        }
    }
    Ok(())
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

    fn config_with(models: &[&str]) -> AgentConfig {
        AgentConfig {
            socket: Some("/tmp/a.sock".into()),
            models: models
                .iter()
                .map(|m| ModelConfig::from_flag(m).unwrap())
                .collect(),
            ..AgentConfig::default()
        }
    }

    /// Writes `text` as agent.toml in a fresh folder.
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A value of the right type for every key a config file may set.
    fn sample_line(key: &str) -> &'static str {
        match key {
            "socket" => "socket = \"agent.sock\"",
            "socket_mode" => "socket_mode = \"0600\"",
            "http" => "http = \"127.0.0.1:8000\"",
            "ort_lib" => "ort_lib = \"lib/libonnxruntime.so.1.31.1\"",
            "max_body_bytes" => "max_body_bytes = 1024",
            "max_connections" => "max_connections = 16",
            "shutdown_grace_ms" => "shutdown_grace_ms = 500",
            "sessions" => "sessions = 2",
            "intra_op_threads" => "intra_op_threads = 1",
            "queue_depth" => "queue_depth = 8",
            "watch_interval_ms" => "watch_interval_ms = 100",
            "models" => "models = [{ name = \"iris\", path = \"models/iris\" }]",
            "hub" => "hub = \"http://hub.example:7070\"",
            "enrollment_token" => "enrollment_token = \"flo_enroll_x\"",
            "state_dir" => "state_dir = \"state\"",
            "heartbeat_seconds" => "heartbeat_seconds = 10",
            "mqtt" => "mqtt = \"127.0.0.1:1883\"",
            "hardware" => "hardware = { camera = \"yes\" }",
            "telemetry" => "telemetry = { window_seconds = 2 }",
            other => panic!("no sample for {other}"),
        }
    }

    #[test]
    fn a_full_serve_config_file_parses() {
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
        let (_dir, path) = file(text);
        let config = AgentConfig::load(&path, AgentCommand::Serve).unwrap();
        config.validate(AgentCommand::Serve).unwrap();
        assert_eq!(config.socket_permissions().unwrap(), 0o600);
        assert_eq!(
            config.models[0].session_settings(),
            SessionSettings {
                sessions: 2,
                intra_op_threads: 1,
                queue_depth: 16,
                engine: flotilla_runtime::Engine::Onnx,
            }
        );
        assert_eq!(
            config.models[0].path,
            path.parent().unwrap().join("models/iris")
        );
        assert_eq!(
            config.socket,
            Some(PathBuf::from("/run/flotilla/agent.sock"))
        );
        assert!(toml::from_str::<AgentConfig>("sockett = \"x\"").is_err());
    }

    #[test]
    fn the_readme_run_config_loads_with_todays_defaults() {
        let (dir, path) = file(
            "hub = \"http://127.0.0.1:7070\"\nenrollment_token = \"flo_enroll_abc\"\nstate_dir = \"state\"\nsocket = \"agent.sock\"\nsessions = 1\n[telemetry]\nwindow_seconds = 2\nreconnect_jitter_seconds = 0\n",
        );
        let config = AgentConfig::load_for_run(&path).unwrap();
        assert_eq!(config.hub.as_deref(), Some("http://127.0.0.1:7070"));
        assert_eq!(config.state_dir, Some(dir.path().join("state")));
        assert_eq!(config.socket, Some(dir.path().join("agent.sock")));
        assert_eq!(config.sessions, Some(1));
        assert_eq!(config.telemetry.window_seconds, 2);
        assert_eq!(config.telemetry.reconnect_jitter_seconds, 0.0);
        assert_eq!(
            config.hub_and_state_dir().unwrap(),
            ("http://127.0.0.1:7070", dir.path().join("state").as_path())
        );
        let defaults = AgentConfig::default();
        assert_eq!(
            (
                config.socket_mode.as_str(),
                config.heartbeat_seconds,
                config.max_body_bytes,
                config.shutdown_grace_ms,
                config.queue_depth,
            ),
            ("0660", 30, 64 * 1024 * 1024, 30_000, None)
        );
        assert_eq!(defaults.watch_interval_ms, 2000);
        assert_eq!(
            AgentConfig::for_hub("http://h:1", "/s"),
            AgentConfig {
                hub: Some("http://h:1".into()),
                state_dir: Some("/s".into()),
                ..defaults
            }
        );
    }

    #[test]
    fn every_key_belongs_to_one_group_and_parses() {
        let mut all: Vec<&str> = [SHARED_KEYS, SERVE_ONLY_KEYS, RUN_ONLY_KEYS].concat();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "a key is in two groups");
        let text: String = all
            .iter()
            .map(|k| format!("{}\n", sample_line(k)))
            .collect();
        let config: AgentConfig = toml::from_str(&text).unwrap();
        // Every key set in the file moved its field off the default.
        let defaults = AgentConfig::default();
        assert_ne!(config.socket, defaults.socket);
        assert_ne!(config.socket_mode, defaults.socket_mode);
        assert_ne!(config.http, defaults.http);
        assert_ne!(config.ort_lib, defaults.ort_lib);
        assert_ne!(config.max_body_bytes, defaults.max_body_bytes);
        assert_ne!(config.shutdown_grace_ms, defaults.shutdown_grace_ms);
        assert_ne!(config.sessions, defaults.sessions);
        assert_ne!(config.intra_op_threads, defaults.intra_op_threads);
        assert_ne!(config.queue_depth, defaults.queue_depth);
        assert_ne!(config.watch_interval_ms, defaults.watch_interval_ms);
        assert_ne!(config.models, defaults.models);
        assert_ne!(config.hub, defaults.hub);
        assert_ne!(config.enrollment_token, defaults.enrollment_token);
        assert_ne!(config.state_dir, defaults.state_dir);
        assert_ne!(config.heartbeat_seconds, defaults.heartbeat_seconds);
        assert_ne!(config.mqtt, defaults.mqtt);
        assert_ne!(config.hardware, defaults.hardware);
        assert_ne!(config.telemetry, defaults.telemetry);
    }

    #[test]
    fn serve_refuses_a_file_that_sets_hub_settings() {
        for key in RUN_ONLY_KEYS {
            let (_dir, path) = file(&format!(
                "socket = \"a.sock\"\n{}\n[[models]]\nname = \"m\"\npath = \"m.onnx\"\n",
                sample_line(key)
            ));
            let error = AgentConfig::load(&path, AgentCommand::Serve).unwrap_err();
            assert!(
                matches!(&error, ConfigError::InFile { error, .. }
                    if matches!(error.as_ref(), ConfigError::NotForCommand { command: AgentCommand::Serve, keys } if keys == &[key.to_string()])),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains("agent.toml")
                    && message.contains(key)
                    && message.contains("settings of `flotilla-agent run`"),
                "{message}"
            );
        }
        let (_dir, path) = file("hub = \"http://h:1\"\nstate_dir = \"s\"\nsocket = \"a.sock\"\n");
        let message = AgentConfig::load(&path, AgentCommand::Serve)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(": hub, state_dir: `flotilla-agent serve` cannot use"),
            "{message}"
        );
    }

    #[test]
    fn run_refuses_a_file_that_sets_models_to_serve() {
        for key in SERVE_ONLY_KEYS {
            let (_dir, path) = file(&format!(
                "hub = \"http://h:1\"\nstate_dir = \"s\"\nsocket = \"a.sock\"\n{}\n",
                sample_line(key)
            ));
            let message = AgentConfig::load_for_run(&path).unwrap_err().to_string();
            assert!(
                message.contains("agent.toml")
                    && message.contains(key)
                    && message.contains("its hub assigns"),
                "{message}"
            );
        }
        for key in SHARED_KEYS {
            // `run` needs a listener; a second `socket` line would be a TOML error.
            let listener = if ["socket", "http"].contains(key) {
                ""
            } else {
                "socket = \"a.sock\"\n"
            };
            let (_dir, path) = file(&format!(
                "hub = \"http://h:1\"\nstate_dir = \"s\"\n{listener}{}\n",
                sample_line(key)
            ));
            AgentConfig::load_for_run(&path).unwrap();
            let (_dir, path) = file(&format!("{}\n", sample_line(key)));
            AgentConfig::load(&path, AgentCommand::Serve).unwrap();
        }
    }

    #[test]
    fn run_names_the_file_and_the_missing_setting() {
        for (text, expected) in [
            (
                "state_dir = \"s\"\nsocket = \"a.sock\"\n",
                "no hub: `flotilla-agent run` needs it, e.g. hub = \"http://hub.example:7070\"",
            ),
            (
                "hub = \"http://h:1\"\nsocket = \"a.sock\"\n",
                "no state_dir: `flotilla-agent run` needs it",
            ),
            (
                "hub = \"http://h:1\"\nstate_dir = \"s\"\n",
                "give socket and/or http so device apps can reach the agent",
            ),
            (
                "hub = \"http://h:1\"\nstate_dir = \"s\"\nhttp = \"0.0.0.0:80\"\n",
                "is not a loopback address",
            ),
        ] {
            let (_dir, path) = file(text);
            let message = AgentConfig::load_for_run(&path).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{}: ", path.display())) && message.contains(expected),
                "{message}"
            );
        }
        let (_dir, path) = file("hub = \"http://h:1\"\nsokcet = \"a.sock\"\n");
        let message = AgentConfig::load_for_run(&path).unwrap_err().to_string();
        assert!(
            message.contains("agent.toml") && message.contains("sokcet"),
            "{message}"
        );
        let message = AgentConfig::load_for_run(Path::new("/nonexistent/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("cannot read config file /nonexistent/agent.toml"),
            "{message}"
        );
    }

    #[test]
    fn top_level_model_settings_fill_what_a_model_leaves_unset() {
        let (_dir, path) = file(
            "socket = \"a.sock\"\nsessions = 3\nqueue_depth = 9\n[[models]]\nname = \"a\"\npath = \"a.onnx\"\n[[models]]\nname = \"b\"\npath = \"b.onnx\"\nsessions = 1\n",
        );
        let mut config = AgentConfig::load(&path, AgentCommand::Serve).unwrap();
        config.apply_model_defaults();
        let settings: Vec<(Option<usize>, Option<usize>, Option<usize>)> = config
            .models
            .iter()
            .map(|m| (m.sessions, m.intra_op_threads, m.queue_depth))
            .collect();
        assert_eq!(
            settings,
            [(Some(3), None, Some(9)), (Some(1), None, Some(9))]
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(matches!(
            ModelConfig::from_flag("iris"),
            Err(ConfigError::ModelFlag(flag)) if flag == "iris"
        ));
        let serve = AgentCommand::Serve;
        assert!(matches!(
            config_with(&["a/b=x.onnx"]).validate(serve),
            Err(ConfigError::ModelName(name)) if name == "a/b"
        ));
        assert!(matches!(
            config_with(&["a=x", "a=y"]).validate(serve),
            Err(ConfigError::DuplicateModel(name)) if name == "a"
        ));
        assert!(matches!(
            config_with(&[]).validate(serve),
            Err(ConfigError::NoModel)
        ));
        let mut config = config_with(&["a=x"]);
        config.http = Some("0.0.0.0:80".parse().unwrap());
        assert!(matches!(
            config.validate(serve),
            Err(ConfigError::NotLoopback(_))
        ));
        config.http = None;
        config.socket = None;
        assert!(matches!(
            config.validate(serve),
            Err(ConfigError::NoListener)
        ));
        let mut config = config_with(&["a=x"]);
        config.socket_mode = "rw".into();
        assert!(matches!(
            config.validate(serve),
            Err(ConfigError::SocketMode(_))
        ));
        let mut config = config_with(&["a=x"]);
        config.sessions = Some(0);
        assert!(matches!(
            config.validate(serve),
            Err(ConfigError::Zero("sessions"))
        ));
    }
}
