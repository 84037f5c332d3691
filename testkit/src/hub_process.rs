//! `HubProcess`: a real `flotilla-hub` initialised in a temp folder and served as a child
//! process on loopback (its settings in DATA_DIR/hub.toml), with its tokens, and the
//! `flotilla` CLI run against it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flotilla_api::AdminClient;

use crate::workspace_binary;

#[derive(Debug)]
pub struct HubProcess {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// The API's base URL from the ready line.
    pub url: String,
    pub operator_token: String,
    pub read_token: String,
    /// The broker address from the ready line, HOST:PORT.
    pub mqtt: String,
    /// The QUIC endpoint from the ready line, when there is one.
    pub quic: Option<String>,
    /// Ports to serve on: 0 (the first start picks, the ready line says which) until the
    /// first start, then those ports, so a restarted hub is where agents were told it is.
    ports: (u16, u16, u16),
    /// Settings (hub.toml text) beyond the listen addresses this harness picks: an external
    /// broker, faster ticks. Merged over those addresses (a key given here wins) into
    /// DATA_DIR/hub.toml at every start.
    pub config: String,
    /// `--log-level` for the hub (default info).
    pub log_level: String,
    /// The network namespace to serve in (`NetLab`), when not the test's own.
    pub netns: Option<String>,
    /// Environment for `serve` beyond the test's (e.g. systemd's `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
}

fn token_line(text: &str, label: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(label))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("flotilla-hub init printed no {label}:\n{text}"))
        .to_owned()
}

impl HubProcess {
    /// `flotilla-hub init` in a temp folder, then `serve` on loopback.
    pub fn start() -> HubProcess {
        Self::start_with("")
    }

    /// `start`, with these settings (hub.toml text, e.g. "[rollouts]\ntick_seconds = 1\n").
    pub fn start_with(config: &str) -> HubProcess {
        let mut hub = Self::init(config);
        hub.serve();
        hub
    }

    /// `flotilla-hub init` only, with these settings for `serve`, which starts it.
    pub fn init(config: &str) -> HubProcess {
        let dir = tempfile::tempdir().expect("a temp folder");
        let output = Command::new(workspace_binary("flotilla-hub"))
            .args(["init", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("flotilla-hub runs");
        assert!(
            output.status.success(),
            "flotilla-hub init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        HubProcess {
            child: None,
            url: String::new(),
            mqtt: String::new(),
            quic: None,
            // The embedded broker binds its own address, so its port is chosen here.
            ports: (0, crate::free_port(), 0),
            operator_token: token_line(&text, "operator token"),
            read_token: token_line(&text, "read-only token"),
            dir,
            config: config.to_owned(),
            log_level: "info".into(),
            netns: None,
            env: Vec::new(),
        }
    }

    /// The settings file `serve` reads: `config` merged over this harness's addresses.
    fn settings(&self) -> toml::Table {
        let mut settings: toml::Table = toml::from_str(&self.config)
            .unwrap_or_else(|e| panic!("HubProcess settings are not TOML: {e}\n{}", self.config));
        let loopback = |port: u16| toml::Value::from(format!("127.0.0.1:{port}"));
        settings
            .entry("listen")
            .or_insert_with(|| loopback(self.ports.0));
        for (table, port) in [("broker", self.ports.1), ("quic", self.ports.2)] {
            settings
                .entry(table)
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .unwrap_or_else(|| panic!("HubProcess settings: {table} is not a table"))
                .entry("listen")
                .or_insert_with(|| loopback(port));
        }
        settings
    }

    /// The port the embedded broker listens on (the ready line names the advertised one,
    /// which a test may have pointed at a proxy).
    pub fn broker_port(&self) -> u16 {
        self.ports.1
    }

    /// The MQTT port the hub told us in its ready line (the one devices are told).
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the hub named no MQTT port: {:?}", self.mqtt))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the hub runs").id()
    }

    /// Starts `serve` (again) on the same data folder and ports. The settings go to
    /// DATA_DIR/hub.toml, which `serve` reads when given no `--config`.
    pub fn serve(&mut self) {
        let settings = self.settings();
        std::fs::write(
            self.dir.path().join("hub.toml"),
            toml::to_string(&settings).expect("settings serialise"),
        )
        .expect("hub.toml is written");
        let mut command =
            crate::netns::command_in(self.netns.as_deref(), workspace_binary("flotilla-hub"));
        let mut child = command
            .args(["serve", "--log-level", &self.log_level, "--data-dir"])
            .arg(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join("hub.log")).expect("a log file"))
            .spawn()
            .expect("flotilla-hub runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("hub did not start:\n{}", self.log()));
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        self.url = field("api=").expect("the ready line names the API");
        self.mqtt = field("mqtt=").unwrap_or_default();
        self.quic = field("quic=");
        let port_of = |address: &str| {
            address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        };
        self.ports.0 = port_of(&self.url).expect("the API URL has a port");
        // The ready line names the QUIC address devices are told: the endpoint's own unless
        // the settings advertise another.
        let advertised_quic = settings
            .get("quic")
            .and_then(|quic| quic.get("advertise"))
            .is_some();
        if let Some(quic) = self
            .quic
            .as_deref()
            .and_then(port_of)
            .filter(|_| !advertised_quic)
        {
            self.ports.2 = quic;
        }
        self.child = Some(child);
    }

    /// SIGKILL and wait: the machine lost, or a crash.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; the hub must exit cleanly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-s", "TERM", &child.id().to_string()])
                .status()
                .expect("kill runs");
            let status = child.wait().expect("the hub exits");
            assert!(status.success(), "{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// The hub's CA certificate file (made by `init`).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("keys/ca.crt")
    }

    /// A client of this hub with `token`, trusting the hub's CA.
    pub fn client(&self, token: Option<String>) -> AdminClient {
        let client = AdminClient::new(&self.url, token).expect("the hub's URL");
        if !self.url.starts_with("https://") {
            return client;
        }
        let pem = std::fs::read_to_string(self.ca_file()).expect("the hub's CA certificate");
        let trust = flotilla_api::tls::ServerTrust::ca_pem(&pem, "ca.crt").expect("a PEM CA");
        client.with_trust(&trust).expect("TLS settings")
    }

    pub fn operator(&self) -> AdminClient {
        self.client(Some(self.operator_token.clone()))
    }

    pub fn reader(&self) -> AdminClient {
        self.client(Some(self.read_token.clone()))
    }

    /// A client with no admin token, as a device or a stranger is.
    pub fn anonymous(&self) -> AdminClient {
        self.client(None)
    }

    /// Runs the `flotilla` CLI against this hub with `token`.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(workspace_binary("flotilla"));
        command
            .args(args)
            .env("FLOTILLA_HUB", &self.url)
            .env("FLOTILLA_CA_FILE", self.ca_file())
            .env_remove("FLOTILLA_TOKEN");
        if let Some(token) = token {
            command.env("FLOTILLA_TOKEN", token);
        }
        command.output().expect("flotilla runs")
    }

    /// A one-time enrollment token with `labels` (`k=v,k=v`), valid ten minutes.
    pub async fn enroll_token(&self, labels: &str) -> String {
        let request = flotilla_api::devices::EnrollmentTokenRequest {
            labels: flotilla_api::selector::parse_labels(labels).expect("labels k=v,k=v"),
            ttl_seconds: 600,
            uses: 1,
        };
        self.operator()
            .create_enrollment_token(&request)
            .await
            .expect("the hub makes enrollment tokens")
            .token
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The stdout of a command that must have succeeded.
pub fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The stderr of a command that must have failed.
pub fn stderr_of_failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
