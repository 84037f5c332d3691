//! `HubProcess`: a real `flotilla-hub` initialised in a temp folder and served as a child
//! process on loopback, with its tokens, and the `flotilla` CLI run against it.

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
    /// Extra `serve` flags (an external broker, a config file).
    pub serve_flags: Vec<String>,
    /// `FLOTILLA_LOG` for the hub (default info).
    pub log_level: String,
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
        Self::start_with(&[])
    }

    /// `start`, with extra `serve` flags.
    pub fn start_with(serve_flags: &[&str]) -> HubProcess {
        let mut hub = Self::init(serve_flags);
        hub.serve();
        hub
    }

    /// `flotilla-hub init` only; `serve` starts it.
    pub fn init(serve_flags: &[&str]) -> HubProcess {
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
            serve_flags: serve_flags.iter().map(|s| s.to_string()).collect(),
            log_level: "info".into(),
        }
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

    /// Starts `serve` (again) on the same data folder and ports.
    pub fn serve(&mut self) {
        let mut child = Command::new(workspace_binary("flotilla-hub"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.ports.0),
                "--mqtt-listen",
                &format!("127.0.0.1:{}", self.ports.1),
                "--quic-listen",
                &format!("127.0.0.1:{}", self.ports.2),
                "--data-dir",
            ])
            .arg(self.dir.path())
            .args(&self.serve_flags)
            .env("FLOTILLA_LOG", &self.log_level)
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
        if let Some(quic) = self.quic.as_deref().and_then(port_of) {
            self.ports.2 = quic;
        }
        self.child = Some(child);
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

    pub fn operator(&self) -> AdminClient {
        AdminClient::new(&self.url, Some(self.operator_token.clone())).expect("the hub's URL")
    }

    pub fn reader(&self) -> AdminClient {
        AdminClient::new(&self.url, Some(self.read_token.clone())).expect("the hub's URL")
    }

    /// Runs the `flotilla` CLI against this hub with `token`.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(workspace_binary("flotilla"));
        command
            .args(args)
            .env("FLOTILLA_HUB", &self.url)
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
