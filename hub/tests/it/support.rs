//! Test support: a hub initialised in a temp folder and served as a real process, and the
//! `flotilla` CLI run against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flotilla_hub::client::AdminClient;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures")
        .join(name)
}

/// A loopback port free right now (the broker binds it by number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback UDP port free right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug)]
pub struct HubProcess {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub operator_token: String,
    pub read_token: String,
    /// The broker address from the ready line, HOST:PORT.
    pub mqtt: String,
    /// API, MQTT and QUIC ports, chosen once so a restarted hub is where agents were told it is.
    pub ports: (u16, u16, u16),
    /// Extra `serve` flags (e.g. an external broker).
    pub serve_flags: Vec<String>,
}

impl HubProcess {
    /// `flotilla-hub init` in a temp folder, then `serve` on a free loopback port.
    pub fn start() -> HubProcess {
        Self::start_with(&[])
    }

    /// `start`, with extra `serve` flags.
    pub fn start_with(serve_flags: &[&str]) -> HubProcess {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
            .args(["init", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let token = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(label))
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        let mut hub = HubProcess {
            child: None,
            url: String::new(),
            mqtt: String::new(),
            ports: (free_port(), free_port(), free_udp_port()),
            operator_token: token("operator token"),
            read_token: token("read-only token"),
            dir,
            serve_flags: serve_flags.iter().map(|s| s.to_string()).collect(),
        };
        hub.serve();
        hub
    }

    /// The MQTT port the hub told us in its ready line.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `serve` (again) on the same data folder.
    pub fn serve(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
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
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join("hub.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("hub did not start:\n{}", self.log()));
        self.url = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("api="))
            .expect("ready line names the API")
            .to_owned();
        self.mqtt = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("mqtt="))
            .unwrap_or_default()
            .to_owned();
        self.child = Some(child);
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-s", "TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(child.wait().unwrap().success(), "{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    pub fn operator(&self) -> AdminClient {
        AdminClient::new(&self.url, Some(self.operator_token.clone())).unwrap()
    }

    pub fn reader(&self) -> AdminClient {
        AdminClient::new(&self.url, Some(self.read_token.clone())).unwrap()
    }

    /// Runs the `flotilla` CLI against this hub with `token`.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(args)
            .env("FLOTILLA_HUB", &self.url)
            .env_remove("FLOTILLA_TOKEN");
        if let Some(token) = token {
            command.env("FLOTILLA_TOKEN", token);
        }
        command.output().unwrap()
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

pub fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of_failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The agent binary, built by `cargo test --workspace` beside this test's binaries.
pub fn agent_binary() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let binary = deps.parent().unwrap().join("flotilla-agent");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with cargo test --workspace (deploy/test.sh does)",
        binary.display()
    );
    binary
}

/// A `flotilla-agent run` process with its own state folder.
#[derive(Debug)]
pub struct AgentRun {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub device_id: String,
}

impl AgentRun {
    /// Writes agent.toml for `hub` with `token` and starts the agent; waits for its ready line.
    pub fn start(hub: &HubProcess, token: &str) -> Result<AgentRun, String> {
        Self::start_with(hub, token, "")
    }

    /// `start`, with more agent.toml (e.g. a `[telemetry]` table) appended.
    pub fn start_with(hub: &HubProcess, token: &str, extra: &str) -> Result<AgentRun, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "hub = \"{}\"\nenrollment_token = \"{token}\"\nstate_dir = \"state\"\nsocket = \"agent.sock\"\nsessions = 1\n{extra}",
            hub.url
        );
        std::fs::write(dir.path().join("agent.toml"), config).unwrap();
        let mut agent = AgentRun {
            child: None,
            dir,
            device_id: String::new(),
        };
        agent.restart()?;
        Ok(agent)
    }

    /// Starts (again) on the same state folder.
    pub fn restart(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut child = Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(self.dir.path().join("agent.toml"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                self.device_id = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("device="))
                    .unwrap_or_default()
                    .to_owned();
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(self.log())
            }
        }
    }

    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// One HTTP/1.1 request over the agent's Unix socket: status and body.
    pub fn socket_request(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        use std::io::{Read, Write};
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream =
            std::os::unix::net::UnixStream::connect(self.dir.path().join("agent.sock"))
                .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| answer.clone())?;
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        Ok((status, body))
    }

    /// Runs `model` on rows of 4 features (iris) over the socket; the served version.
    pub fn infer_rows(&self, model: &str, rows: &[[f32; 4]]) -> Result<u64, String> {
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        let body = serde_json::json!({"inputs": [{"name": "float_input", "shape": [rows.len(), 4], "datatype": "FP32", "data": data}]});
        let (status, answer) = self.socket_request(
            "POST",
            &format!("/v2/models/{model}/infer"),
            &body.to_string(),
        )?;
        if status != 200 {
            return Err(format!("{status}: {answer}"));
        }
        let value: serde_json::Value = serde_json::from_str(&answer).map_err(|_| answer.clone())?;
        value["model_version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or(answer)
    }

    /// A counter or gauge from the agent's local `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.socket_request("GET", "/metrics", "").unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("agent metrics have no {name}:\n{text}")) as u64
    }

    /// Runs the scaler model on `x` over the agent's Unix socket; `(version, y)` or the error.
    pub fn scale(&self, model: &str, x: f32) -> Result<(u64, f64), String> {
        let body =
            format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[{x}]}}]}}"#);
        let (_, answer) =
            self.socket_request("POST", &format!("/v2/models/{model}/infer"), &body)?;
        let json = answer.as_str();
        let value: serde_json::Value = serde_json::from_str(json).map_err(|_| answer.clone())?;
        match (
            value["model_version"].as_str(),
            value["outputs"][0]["data"][0].as_f64(),
        ) {
            (Some(version), Some(y)) => Ok((version.parse().unwrap(), y)),
            _ => Err(value.to_string()),
        }
    }

    /// Waits until the agent serves `model` at `version` (checked by inference).
    pub fn wait_serving(&self, model: &str, version: u64) {
        for _ in 0..600 {
            if self.scale(model, 1.0).is_ok_and(|(v, _)| v == version) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent {} never served {model} version {version}:\n{}",
            self.device_id,
            self.log()
        );
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A Mosquitto broker (Debian package `mosquitto`, installed by .ci/run) on a free port.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let binary =
            binary.expect("mosquitto is not installed: apt-get install mosquitto (.ci/run does)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Mosquitto {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto did not start on port {port}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on loopback that the test can unplug (every connection cut, new ones refused
/// at once) and plug back: a device losing its network, without touching anything else.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    upstream: std::sync::Arc<std::sync::atomic::AtomicU16>,
    plugged: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl TcpProxy {
    /// Listens now; forwards to the upstream port once `connect_to` names it.
    pub fn start() -> TcpProxy {
        use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let plugged = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let upstream = Arc::new(AtomicU16::new(0));
        let (p, c, u) = (plugged.clone(), connections.clone(), upstream.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !p.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) =
                    std::net::TcpStream::connect(("127.0.0.1", u.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                {
                    let mut list = c.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        TcpProxy {
            port,
            upstream,
            plugged,
            connections,
        }
    }

    pub fn connect_to(&self, upstream: u16) {
        self.upstream
            .store(upstream, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn unplug(&self) {
        self.plugged
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn plug(&self) {
        self.plugged
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A one-time enrollment token with `labels` (k=v,k=v), valid ten minutes.
pub async fn enroll_token(hub: &HubProcess, labels: &str) -> String {
    let labels = flotilla_hub::data_dir::parse_labels(labels).unwrap();
    let answer = hub
        .operator()
        .json(
            hyper::Method::POST,
            "/api/v1/enrollment-tokens",
            Some(serde_json::json!({"labels": labels, "ttl_seconds": 600})),
        )
        .await
        .unwrap();
    answer["token"].as_str().unwrap().to_owned()
}
