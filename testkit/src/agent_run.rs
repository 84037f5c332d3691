//! `AgentRun`: a real `flotilla-agent run` process with its own state folder, following a
//! `HubProcess`, and requests to it over its Unix socket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flotilla_api::http::{HttpClient, Method};

use crate::{HubProcess, workspace_binary};

#[derive(Debug)]
pub struct AgentRun {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub device_id: String,
    /// The network namespace it runs in (`NetLab`), when not the test's own.
    pub netns: Option<String>,
    /// Environment for the process beyond the test's (e.g. systemd's `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// What to run: this build's flotilla-agent, or e.g. a script running another
    /// architecture's build under an emulator.
    pub binary: std::path::PathBuf,
}

impl AgentRun {
    /// Writes agent.toml for `hub` with `token` and starts the agent; waits for its ready line.
    pub fn start(hub: &HubProcess, token: &str) -> Result<AgentRun, String> {
        Self::start_with(hub, token, "")
    }

    /// `start`, with more agent.toml (e.g. a `[telemetry]` table) appended.
    pub fn start_with(hub: &HubProcess, token: &str, extra: &str) -> Result<AgentRun, String> {
        Self::start_in(hub, token, extra, None)
    }

    /// `start_with`, in network namespace `netns` when given.
    pub fn start_in(
        hub: &HubProcess,
        token: &str,
        extra: &str,
        netns: Option<&str>,
    ) -> Result<AgentRun, String> {
        let mut agent = Self::prepare(&hub.url, token, extra)?;
        agent.netns = netns.map(str::to_owned);
        agent.restart()?;
        Ok(agent)
    }

    /// Writes agent.toml for the hub at `hub_url` with `token` (and `extra`), starts
    /// nothing: `restart` or `spawn` does.
    pub fn prepare(hub_url: &str, token: &str, extra: &str) -> Result<AgentRun, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = format!(
            "hub = \"{hub_url}\"\nenrollment_token = \"{token}\"\nstate_dir = \"state\"\nsocket = \"agent.sock\"\nsessions = 1\n{extra}"
        );
        std::fs::write(dir.path().join("agent.toml"), config).map_err(|e| e.to_string())?;
        Ok(AgentRun {
            child: None,
            dir,
            device_id: String::new(),
            netns: None,
            env: Vec::new(),
            binary: workspace_binary("flotilla-agent"),
        })
    }

    /// Starts (again) on the same state folder and waits for the ready line.
    pub fn restart(&mut self) -> Result<(), String> {
        let mut child = self.spawn_process()?;
        let stdout = child.stdout.take().expect("stdout is piped");
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

    /// Starts the process without waiting for it to be ready (it may never be: an
    /// unreachable hub); its log grows in `log()`.
    pub fn spawn(&mut self) -> Result<(), String> {
        self.child = Some(self.spawn_process()?);
        Ok(())
    }

    fn spawn_process(&self) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .map_err(|e| e.to_string())?;
        let mut command = crate::netns::command_in(self.netns.as_deref(), self.binary.clone());
        command
            .args(["run", "--config"])
            .arg(self.dir.path().join("agent.toml"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `deadline`): the exit status
    /// (None if it had to be killed) and how long the stop took.
    pub fn terminate(
        &mut self,
        deadline: Duration,
    ) -> (Option<std::process::ExitStatus>, Duration) {
        let mut child = self.child.take().expect("the agent runs");
        let started = flotilla_common::clock::Stopwatch::start();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        while started.elapsed() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        (None, started.elapsed())
    }

    /// Waits until the log (kept across restarts) holds `text` at least `times` times;
    /// panics with the log after `timeout`.
    pub fn wait_for_log(&self, text: &str, times: usize, timeout: Duration) {
        let started = flotilla_common::clock::Stopwatch::start();
        while self.log().matches(text).count() < times {
            assert!(
                started.elapsed() < timeout,
                "the agent never logged {text:?} {times} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the agent the way a power cut would: SIGKILL.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
        let client = HttpClient::new(&format!(
            "unix:{}",
            self.dir.path().join("agent.sock").display()
        ))
        .map_err(|e| e.to_string())?;
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let body = bytes::Bytes::from(body.to_owned());
        // Synchronous for the tests' convenience, callable from async tests too: the request
        // runs on a runtime of its own, on a thread of its own.
        let answer = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?
                        .block_on(client.call(
                            method,
                            path,
                            &[("content-type", "application/json")],
                            body,
                        ))
                        .map_err(|e| e.to_string())
                })
                .join()
                .map_err(|_| "the request thread panicked".to_owned())?
        })?;
        Ok((
            answer.status.as_u16(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        ))
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
        let (_, text) = self
            .socket_request("GET", "/metrics", "")
            .expect("the agent answers /metrics");
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
        let value: serde_json::Value = serde_json::from_str(&answer).map_err(|_| answer.clone())?;
        match (
            value["model_version"].as_str(),
            value["outputs"][0]["data"][0].as_f64(),
        ) {
            (Some(version), Some(y)) => Ok((version.parse().map_err(|_| answer.clone())?, y)),
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
