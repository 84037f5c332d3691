//! What a hub does, as one settings file (hub.toml) instead of a flag per setting: serde with
//! unknown keys refused, defaults from named functions, values checked when loading with the
//! file and the key named. Each field's doc comment is its user documentation: `flotilla-hub
//! config default` and the reference in docs/hub.md are generated from these comments by
//! `config_reference` (a line `Example: VALUE` gives the example shown for a key with no
//! default; comments do not state defaults, the generated text does).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flotilla_common::config_file::{ConfigFileError, load_toml};
use serde::{Deserialize, Serialize};

use crate::transport::mqtt::BrokerAddress;

/// The name of the settings file `flotilla-hub serve` reads from its data folder when no
/// `--config` is given.
pub const DATA_DIR_CONFIG_FILE: &str = "hub.toml";

/// Settings of `flotilla-hub serve` (hub.toml). Give the file with `--config FILE`; without
/// it the hub reads DATA_DIR/hub.toml when that file exists, and otherwise uses the defaults
/// shown here. Unknown keys are refused. The data folder, log level and ONNX Runtime library
/// are flags, not settings: they say how the process runs, not what the hub does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Address the admin API listens on (TCP): admin calls, enrollment and artifact
    /// downloads over HTTP ranges. Port 0 picks a free port; the ready line names it.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The API URL devices are told at enrollment for artifact downloads, and the base of the
    /// links in trigger payloads: https:// when `[tls] enabled` (its host must be one of the
    /// certificate's names), else http://. When unset: the scheme and the address the API
    /// listens on.
    /// Example: "https://hub.example:7070"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// Largest model file a push may upload, in bytes; a larger one is refused with 413.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Connections the admin API keeps open at once (operators, devices downloading, their
    /// enrollments); one more is answered 503 and closed, and counted in
    /// flotilla_hub_api_connections_refused_total.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The MQTT broker the hub and its devices meet on: the embedded one, or an external
    /// broker for fleets beyond about 10,000 devices.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// The QUIC artifact endpoint (UDP), which agents prefer to HTTP ranges for downloads.
    #[serde(default)]
    pub quic: QuicSettings,
    /// Drift and health telemetry: the fleet-wide drift evaluator and the ingest queue.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Rollouts in waves (docs/rollouts.md).
    #[serde(default)]
    pub rollouts: RolloutSettings,
    /// Retraining triggers (docs/triggers.md).
    #[serde(default)]
    pub triggers: TriggerSettings,
    /// The device inventory.
    #[serde(default)]
    pub devices: DeviceSettings,
    /// TLS on the admin API and the device endpoints, with certificates from the hub's own
    /// CA (`keys/ca.crt`).
    #[serde(default)]
    pub tls: TlsSettings,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Serve the admin API and the device endpoints over HTTPS. Turning it off is allowed
    /// only when `listen` is a loopback address (local trials); everything then travels in
    /// plain text, tokens included.
    #[serde(default = "default_tls_enabled")]
    pub enabled: bool,
    /// Names (DNS names or IP addresses) the hub's certificate is valid for besides
    /// localhost, 127.0.0.1, ::1, the address the API listens on and the host of
    /// `advertise_url`: every other name devices and operators reach the hub by.
    /// Example: ["hub.example", "10.0.0.5"]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// How long device certificates are valid, in days.
    #[serde(default = "default_device_certificate_days")]
    pub device_certificate_days: u64,
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Address the embedded MQTT broker (MQTT 3.1.1 and 5) listens on (TCP): MQTT over TLS
    /// with device certificates when `[tls] enabled`, plain MQTT (loopback only) otherwise.
    /// Port 0 picks a free port; the ready line names it. Unused when `url` names an
    /// external broker.
    #[serde(default = "default_broker_listen")]
    pub listen: SocketAddr,
    /// An external broker (Mosquitto, EMQX) to use instead of the embedded one:
    /// mqtt://[USER:PASS@]HOST:PORT, or mqtts://HOST:PORT for MQTT over TLS where the hub
    /// presents its certificate and trusts a broker certificate from its CA
    /// (`flotilla-hub broker-config mosquitto` writes such a set-up).
    /// Example: "mqtt://flotilla:secret@broker.example:1883"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The broker address devices are told at enrollment, HOST:PORT (a relay, a port
    /// forward, a public name). When unset: the broker's own, `listen` or the host and port
    /// of `url`.
    /// Example: "mqtt.example:1883"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// A file the hub keeps its CA's certificate revocation list (PEM) in, besides
    /// `keys/crl.pem`: rewritten at start and at every `device revoke` or `remove`, for an
    /// external broker's `crlfile` (`broker-config mosquitto` points Mosquitto at one).
    /// Mosquitto 2 reads it when it starts: restart it after a revocation.
    /// Example: "/etc/mosquitto/flotilla/crl.pem"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
}

/// `[quic]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicSettings {
    /// Serve artifacts over QUIC as well as HTTP ranges. false: HTTP ranges only (agents
    /// fall back to them by themselves when UDP is blocked, after a timeout).
    #[serde(default = "default_quic_enabled")]
    pub enabled: bool,
    /// Address the QUIC artifact endpoint listens on (UDP). Port 0 picks a free port; the
    /// ready line names it.
    #[serde(default = "default_quic_listen")]
    pub listen: SocketAddr,
    /// The QUIC address devices are told at enrollment, IP:PORT (agents connect to an
    /// address, not a host name). When unset: the address the endpoint listens on.
    /// Example: "203.0.113.7:7443"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Seconds between fleet-wide drift evaluations, which record drift_alert and
    /// drift_cleared events and refresh the per-version gauges on /metrics.
    #[serde(default = "default_drift_check_seconds")]
    pub drift_check_seconds: u64,
    /// How far back the fleet-wide drift evaluation looks, in seconds.
    #[serde(default = "default_drift_lookback_seconds")]
    pub drift_lookback_seconds: u64,
    /// Telemetry frames queued for ingest, at most; when the queue is full the hub stops
    /// reading from the broker instead of growing its memory.
    #[serde(default = "default_queue_frames")]
    pub queue_frames: usize,
    /// Bytes of telemetry frames queued for ingest, at most (the same queue, bounded in
    /// bytes).
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: u64,
}

/// `[rollouts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettings {
    /// Seconds between rollout controller steps (installs, gates, the rate of new devices).
    #[serde(default = "default_rollout_tick_seconds")]
    pub tick_seconds: u64,
}

/// `[triggers]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSettings {
    /// Seconds between retraining trigger passes (each rule judges its own windows).
    #[serde(default = "default_trigger_tick_seconds")]
    pub tick_seconds: u64,
    /// Let trigger rules run commands on this host, as the hub's user. Off unless set:
    /// anyone with an operator token could otherwise run any program here. Webhooks need no
    /// permission.
    #[serde(default)]
    pub allow_commands: bool,
}

/// `[devices]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// A device the hub has heard nothing from (status, heartbeat, report) for this many
    /// seconds is marked offline, even if its last will never arrived. Agents send a
    /// heartbeat every 30 seconds by default: keep this a few heartbeats long.
    #[serde(default = "default_offline_after_seconds")]
    pub offline_after_seconds: u64,
}

fn default_tls_enabled() -> bool {
    true
}
fn default_device_certificate_days() -> u64 {
    90
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_upload_bytes() -> u64 {
    2 * 1024 * 1024 * 1024
}
fn default_broker_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_quic_enabled() -> bool {
    true
}
fn default_quic_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_drift_check_seconds() -> u64 {
    60
}
fn default_drift_lookback_seconds() -> u64 {
    600
}
fn default_queue_frames() -> usize {
    8192
}
fn default_queue_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_rollout_tick_seconds() -> u64 {
    5
}
fn default_trigger_tick_seconds() -> u64 {
    5
}
fn default_offline_after_seconds() -> u64 {
    120
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: default_listen(),
            advertise_url: None,
            max_upload_bytes: default_max_upload_bytes(),
            max_connections: default_max_connections(),
            broker: BrokerSettings::default(),
            quic: QuicSettings::default(),
            telemetry: TelemetrySettings::default(),
            rollouts: RolloutSettings::default(),
            triggers: TriggerSettings::default(),
            devices: DeviceSettings::default(),
            tls: TlsSettings::default(),
        }
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            enabled: default_tls_enabled(),
            names: Vec::new(),
            device_certificate_days: default_device_certificate_days(),
        }
    }
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            offline_after_seconds: default_offline_after_seconds(),
        }
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: default_broker_listen(),
            url: None,
            advertise: None,
            crl_file: None,
        }
    }
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            enabled: default_quic_enabled(),
            listen: default_quic_listen(),
            advertise: None,
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            drift_check_seconds: default_drift_check_seconds(),
            drift_lookback_seconds: default_drift_lookback_seconds(),
            queue_frames: default_queue_frames(),
            queue_bytes: default_queue_bytes(),
        }
    }
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            tick_seconds: default_rollout_tick_seconds(),
        }
    }
}

impl Default for TriggerSettings {
    fn default() -> Self {
        TriggerSettings {
            tick_seconds: default_trigger_tick_seconds(),
            allow_commands: false,
        }
    }
}

/// Longest tick of a periodic task: a day. Longer is surely a mistake (a tick is how long a
/// step waits), and timers that far out are where tokio's instants overflow.
const MAX_TICK_SECONDS: u64 = 24 * 3600;
/// Longest drift look-back: the hub refuses windows older than 30 days, so a longer one
/// would find nothing more.
const MAX_LOOKBACK_SECONDS: u64 = 30 * 24 * 3600;
/// Deepest ingest queue in frames; the queue's byte bound is what limits memory, this keeps
/// the channel's capacity far from tokio's limit.
const MAX_QUEUE_FRAMES: usize = 10_000_000;

/// One setting that is not acceptable, named as the file spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    /// The table, or None for a top-level key.
    pub table: Option<&'static str>,
    pub key: &'static str,
    /// The value as given and what is wrong with it.
    pub problem: String,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.table {
            Some(table) => write!(f, "[{table}] {}: {}", self.key, self.problem),
            None => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

fn joined(problems: &[InvalidSetting]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum HubConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("config file {} has settings the hub cannot use: {}; fix them (flotilla-hub config default shows every key)", path.display(), joined(problems))]
    InFile {
        path: PathBuf,
        problems: Vec<InvalidSetting>,
    },
    #[error("the hub's settings cannot be used: {}", joined(.0))]
    Invalid(Vec<InvalidSetting>),
}

/// Where `serve`'s settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The file given with `--config`, or DATA_DIR/hub.toml.
    File(PathBuf),
    /// No file: the defaults.
    Defaults,
}

impl HubConfig {
    /// Reads and checks `path`; every error names the file, and a bad value its key.
    pub fn load(path: &Path) -> Result<HubConfig, HubConfigError> {
        let config: HubConfig = load_toml(path)?;
        config
            .validate()
            .map_err(|problems| HubConfigError::InFile {
                path: path.to_owned(),
                problems,
            })?;
        Ok(config)
    }

    /// `serve`'s settings: the `--config` file when given (it must exist), else
    /// DATA_DIR/hub.toml when it exists, else the defaults. A hub's settings belong with its
    /// data folder (its keys, its devices, the addresses they were told), so the folder may
    /// carry them; a file given explicitly replaces that one, it is not merged.
    pub fn for_serve(
        config_flag: Option<&Path>,
        data_dir: &Path,
    ) -> Result<(HubConfig, ConfigSource), HubConfigError> {
        if let Some(path) = config_flag {
            return Ok((HubConfig::load(path)?, ConfigSource::File(path.to_owned())));
        }
        let in_data_dir = data_dir.join(DATA_DIR_CONFIG_FILE);
        match std::fs::metadata(&in_data_dir) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok((HubConfig::default(), ConfigSource::Defaults))
            }
            _ => Ok((
                HubConfig::load(&in_data_dir)?,
                ConfigSource::File(in_data_dir),
            )),
        }
    }

    /// Every setting that cannot be used, with its key; serde has already checked types and
    /// address syntax.
    pub fn validate(&self) -> Result<(), Vec<InvalidSetting>> {
        let mut problems = Vec::new();
        let mut problem = |table, key, problem: String| {
            problems.push(InvalidSetting {
                table,
                key,
                problem,
            })
        };
        let scheme = if self.tls.enabled {
            "https://"
        } else {
            "http://"
        };
        let bad_url = |url: &&String| url.strip_prefix(scheme).is_none_or(str::is_empty);
        if let Some(url) = self.advertise_url.as_ref().filter(bad_url) {
            problem(
                None,
                "advertise_url",
                format!(
                    "{url:?} is not an {scheme} URL, and [tls] enabled is {}: e.g. \"{scheme}hub.example:7070\"",
                    self.tls.enabled
                ),
            );
        }
        if !self.tls.enabled && !self.listen.ip().is_loopback() {
            problem(
                Some("tls"),
                "enabled",
                format!(
                    "false, but the API listens on {}, which is not a loopback address: plain HTTP would carry tokens across the network; keep TLS on, or listen on 127.0.0.1",
                    self.listen
                ),
            );
        }
        if !(1..=3650).contains(&self.tls.device_certificate_days) {
            problem(
                Some("tls"),
                "device_certificate_days",
                format!(
                    "{} is not between 1 and 3650 days",
                    self.tls.device_certificate_days
                ),
            );
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            problem(
                None,
                "max_connections",
                format!("{} is not between 1 and 1000000", self.max_connections),
            );
        }
        if self.max_upload_bytes == 0 {
            problem(
                None,
                "max_upload_bytes",
                "0 would refuse every push; give the largest model size in bytes".into(),
            );
        }
        match &self.broker.url {
            Some(url) => {
                if let Err(error) = BrokerAddress::parse(url) {
                    problem(
                        Some("broker"),
                        "url",
                        format!("{error}; give mqtt://[USER:PASS@]HOST:PORT or mqtts://HOST:PORT"),
                    );
                }
            }
            None if !self.tls.enabled && !self.broker.listen.ip().is_loopback() => problem(
                Some("broker"),
                "listen",
                format!(
                    "{} is not a loopback address, but [tls] enabled = false: any client could connect without a certificate; keep TLS on, or listen on 127.0.0.1",
                    self.broker.listen
                ),
            ),
            None => {}
        }
        let bad_advertise = |advertise: &&String| !is_host_and_port(advertise);
        if let Some(advertise) = self.broker.advertise.as_ref().filter(bad_advertise) {
            problem(
                Some("broker"),
                "advertise",
                format!("{advertise:?} is not HOST:PORT, e.g. \"mqtt.example:1883\""),
            );
        }
        let mut seconds = |table, key, value: u64, most: u64| {
            if !(1..=most).contains(&value) {
                problem(
                    Some(table),
                    key,
                    format!("{value} is not between 1 and {most} seconds"),
                );
            }
        };
        let telemetry = &self.telemetry;
        seconds(
            "telemetry",
            "drift_check_seconds",
            telemetry.drift_check_seconds,
            MAX_TICK_SECONDS,
        );
        seconds(
            "telemetry",
            "drift_lookback_seconds",
            telemetry.drift_lookback_seconds,
            MAX_LOOKBACK_SECONDS,
        );
        seconds(
            "rollouts",
            "tick_seconds",
            self.rollouts.tick_seconds,
            MAX_TICK_SECONDS,
        );
        seconds(
            "triggers",
            "tick_seconds",
            self.triggers.tick_seconds,
            MAX_TICK_SECONDS,
        );
        seconds(
            "devices",
            "offline_after_seconds",
            self.devices.offline_after_seconds,
            MAX_LOOKBACK_SECONDS,
        );
        if !(1..=MAX_QUEUE_FRAMES).contains(&telemetry.queue_frames) {
            problem(
                Some("telemetry"),
                "queue_frames",
                format!(
                    "{} is not between 1 and {MAX_QUEUE_FRAMES} frames",
                    telemetry.queue_frames
                ),
            );
        }
        if telemetry.queue_bytes == 0 {
            problem(
                Some("telemetry"),
                "queue_bytes",
                "0 would hold no frame; give the queue's bound in bytes".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// `HOST:PORT` with a non-empty host and a port number (a host name or an address; IPv6 in
/// brackets).
fn is_host_and_port(text: &str) -> bool {
    text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` as hub.toml in a fresh folder.
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_defaults_are_those_of_the_flags_they_replace() {
        let config = HubConfig::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.advertise_url, None);
        assert_eq!(config.max_upload_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(config.broker.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(
            (&config.broker.url, &config.broker.advertise),
            (&None, &None)
        );
        assert!(config.quic.enabled);
        assert_eq!(config.quic.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(config.quic.advertise, None);
        let telemetry = &config.telemetry;
        assert_eq!(
            (
                telemetry.drift_check_seconds,
                telemetry.drift_lookback_seconds,
                telemetry.queue_frames,
                telemetry.queue_bytes
            ),
            (60, 600, 8192, 64 * 1024 * 1024)
        );
        assert_eq!(config.rollouts.tick_seconds, 5);
        assert_eq!(config.triggers.tick_seconds, 5);
        assert!(!config.triggers.allow_commands);
        assert_eq!(config.validate(), Ok(()));
        // An empty file is the defaults.
        assert_eq!(toml::from_str::<HubConfig>("").unwrap(), config);
    }

    #[test]
    fn a_file_sets_keys_in_their_tables() {
        let (_dir, path) = file(
            r#"
            listen = "0.0.0.0:8080"
            advertise_url = "https://hub.example:8080"
            [broker]
            url = "mqtt://u:p@broker.example:1883"
            advertise = "mqtt.example:8883"
            [quic]
            enabled = false
            advertise = "203.0.113.7:7443"
            [telemetry]
            drift_check_seconds = 1
            queue_frames = 16
            [rollouts]
            tick_seconds = 2
            [triggers]
            allow_commands = true
            "#,
        );
        let config = HubConfig::load(&path).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(
            config.advertise_url.as_deref(),
            Some("https://hub.example:8080")
        );
        assert_eq!(
            config.broker.url.as_deref(),
            Some("mqtt://u:p@broker.example:1883")
        );
        assert_eq!(
            config.broker.advertise.as_deref(),
            Some("mqtt.example:8883")
        );
        assert!(!config.quic.enabled);
        assert_eq!(
            config.quic.advertise,
            Some("203.0.113.7:7443".parse().unwrap())
        );
        assert_eq!(config.telemetry.drift_check_seconds, 1);
        assert_eq!(config.telemetry.drift_lookback_seconds, 600);
        assert_eq!(config.telemetry.queue_frames, 16);
        assert_eq!(config.rollouts.tick_seconds, 2);
        assert_eq!(config.triggers.tick_seconds, 5);
        assert!(config.triggers.allow_commands);
    }

    #[test]
    fn unknown_keys_and_bad_syntax_name_the_file_and_the_key() {
        for (text, expected) in [
            ("[triggers]\nallow_comands = true\n", "allow_comands"),
            ("mqtt_url = \"mqtt://h:1\"\n", "mqtt_url"),
            ("[quic]\nadvertise = \"hub.example:7443\"\n", "advertise"),
            ("listen = \"7070\"\n", "listen"),
            ("[rollouts]\ntick_seconds = -1\n", "tick_seconds"),
        ] {
            let (_dir, path) = file(text);
            let message = HubConfig::load(&path).unwrap_err().to_string();
            assert!(
                message.contains(&path.display().to_string()) && message.contains(expected),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn values_are_checked_with_the_file_and_the_key_named() {
        for (text, expected) in [
            (
                "[rollouts]\ntick_seconds = 0\n",
                "[rollouts] tick_seconds: 0 is not between 1 and 86400 seconds",
            ),
            (
                "[triggers]\ntick_seconds = 0\n",
                "[triggers] tick_seconds: 0 is not between 1 and 86400 seconds",
            ),
            (
                "[telemetry]\ndrift_check_seconds = 0\n",
                "[telemetry] drift_check_seconds: 0 is not between",
            ),
            (
                "[telemetry]\ndrift_lookback_seconds = 99999999\n",
                "[telemetry] drift_lookback_seconds: 99999999 is not between 1 and 2592000",
            ),
            (
                "[telemetry]\nqueue_frames = 0\n",
                "[telemetry] queue_frames: 0 is not between 1 and",
            ),
            (
                "[telemetry]\nqueue_bytes = 0\n",
                "[telemetry] queue_bytes: 0",
            ),
            ("max_upload_bytes = 0\n", "max_upload_bytes: 0 would refuse"),
            (
                "advertise_url = \"http://hub.example\"\n",
                "advertise_url: \"http://hub.example\" is not an https:// URL",
            ),
            (
                "[broker]\nurl = \"tcp://broker:1883\"\n",
                "[broker] url: \"tcp://broker:1883\" is not mqtt://HOST:PORT",
            ),
            (
                "[broker]\nadvertise = \"mqtt.example\"\n",
                "[broker] advertise: \"mqtt.example\" is not HOST:PORT",
            ),
            (
                "[tls]\nenabled = false\n[broker]\nlisten = \"0.0.0.0:1883\"\n",
                "[broker] listen: 0.0.0.0:1883 is not a loopback address",
            ),
        ] {
            let (_dir, path) = file(text);
            let message = HubConfig::load(&path).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("config file {} ", path.display()))
                    && message.contains(expected),
                "{text}: {message}"
            );
        }
        // Every problem is named at once, so one edit fixes them all.
        let (_dir, path) = file("[rollouts]\ntick_seconds = 0\n[triggers]\ntick_seconds = 0\n");
        let HubConfigError::InFile { problems, .. } = HubConfig::load(&path).unwrap_err() else {
            panic!("a value error")
        };
        assert_eq!(
            problems
                .iter()
                .map(|p| (p.table, p.key))
                .collect::<Vec<_>>(),
            [
                (Some("rollouts"), "tick_seconds"),
                (Some("triggers"), "tick_seconds")
            ]
        );
        // An external broker makes the embedded one's address irrelevant.
        let (_dir, path) = file(
            "[tls]\nenabled = false\n[broker]\nlisten = \"0.0.0.0:1\"\nurl = \"mqtt://h:1883\"\n",
        );
        HubConfig::load(&path).unwrap();
    }

    #[test]
    fn serve_reads_the_flag_then_the_data_folder_then_the_defaults() {
        let data_dir = tempfile::tempdir().unwrap();
        assert_eq!(
            HubConfig::for_serve(None, data_dir.path()).unwrap(),
            (HubConfig::default(), ConfigSource::Defaults)
        );
        let in_folder = data_dir.path().join("hub.toml");
        std::fs::write(&in_folder, "[rollouts]\ntick_seconds = 7\n").unwrap();
        let (config, source) = HubConfig::for_serve(None, data_dir.path()).unwrap();
        assert_eq!(
            (config.rollouts.tick_seconds, source),
            (7, ConfigSource::File(in_folder.clone()))
        );
        let (_other, given) = file("[triggers]\ntick_seconds = 3\n");
        let (config, source) = HubConfig::for_serve(Some(&given), data_dir.path()).unwrap();
        // The given file replaces the folder's: nothing of it is merged in.
        assert_eq!(
            (
                config.rollouts.tick_seconds,
                config.triggers.tick_seconds,
                source
            ),
            (5, 3, ConfigSource::File(given))
        );
        let missing = data_dir.path().join("missing.toml");
        let message = HubConfig::for_serve(Some(&missing), data_dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("cannot read config file") && message.contains("missing.toml"),
            "{message}"
        );
        std::fs::write(&in_folder, "[rollouts]\ntick_seconds = 0\n").unwrap();
        let message = HubConfig::for_serve(None, data_dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&in_folder.display().to_string())
                && message.contains("[rollouts] tick_seconds"),
            "{message}"
        );
    }

    #[test]
    fn host_and_port_needs_both() {
        assert!(is_host_and_port("mqtt.example:1883"));
        assert!(is_host_and_port("10.0.0.1:1"));
        assert!(is_host_and_port("[::1]:1883"));
        assert!(!is_host_and_port("mqtt.example"));
        assert!(!is_host_and_port(":1883"));
        assert!(!is_host_and_port("mqtt.example:99999"));
        assert!(!is_host_and_port("a b:1"));
    }
}
