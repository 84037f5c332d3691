//! Test support: the real agent binary started on temp dirs, and requests to it over its
//! Unix socket or loopback TCP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_api::http::{HttpClient, Method};
use http_body_util::Full;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Where a running agent listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` message of an error response, checking the shape of the body.
    pub fn error(&self) -> String {
        let json = self.json();
        json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {json}"))
            .to_owned()
    }
}

/// Sends one request on a new connection, with the one HTTP client every Flotilla program
/// uses.
pub async fn send(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Response {
    let base = match endpoint {
        Endpoint::Unix(path) => format!("unix:{}", path.display()),
        Endpoint::Tcp(address) => format!("http://{address}"),
    };
    let client = HttpClient::new(&base).unwrap();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let answer = client
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            path,
            &headers,
            Full::new(Bytes::from(body)),
            1 << 30,
        )
        .await
        .unwrap();
    Response {
        status: answer.status.as_u16(),
        headers: answer.headers,
        body: answer.body.to_vec(),
    }
}

pub async fn get(endpoint: &Endpoint, path: &str) -> Response {
    send(endpoint, "GET", path, &[], Vec::new()).await
}

pub async fn post_json(endpoint: &Endpoint, path: &str, body: &serde_json::Value) -> Response {
    send(
        endpoint,
        "POST",
        path,
        &[("content-type", "application/json".into())],
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

/// Sends a binary-extension request: JSON header, then the binary parts in order.
pub async fn post_binary(
    endpoint: &Endpoint,
    path: &str,
    header: &serde_json::Value,
    parts: &[Vec<u8>],
) -> Response {
    let mut body = serde_json::to_vec(header).unwrap();
    let json_length = body.len();
    for part in parts {
        body.extend_from_slice(part);
    }
    let headers = [
        ("content-type", "application/octet-stream".to_owned()),
        ("inference-header-content-length", json_length.to_string()),
    ];
    send(endpoint, "POST", path, &headers, body).await
}

/// Splits a binary-extension response into its JSON header and binary part.
pub fn split_binary_response(response: &Response) -> (serde_json::Value, Vec<u8>) {
    let length: usize = response
        .headers
        .get("inference-header-content-length")
        .expect("binary response has Inference-Header-Content-Length")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&response.body[..length]).unwrap(),
        response.body[length..].to_vec(),
    )
}

/// The agent binary, started as a real process.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    /// Holds the socket and log; removed when the agent is dropped.
    pub _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub http: Option<SocketAddr>,
    pub stderr_path: PathBuf,
}

impl AgentProcess {
    /// Starts `flotilla-agent serve` with the models, a socket in a temp dir, a free loopback
    /// port, and `extra` flags; panics with the agent's stderr if it does not become ready.
    pub fn start(models: &[(&str, &Path)], extra: &[&str]) -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, models, extra)
            .unwrap_or_else(|stderr| panic!("agent did not start:\n{stderr}"))
    }

    pub fn start_in(
        dir: tempfile::TempDir,
        models: &[(&str, &Path)],
        extra: &[&str],
    ) -> Result<AgentProcess, String> {
        let socket = dir.path().join("agent.sock");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--socket".into(),
            socket.display().to_string(),
        ];
        args.extend(["--http".into(), "127.0.0.1:0".into()]);
        for (name, path) in models {
            args.extend(["--model".into(), format!("{name}={}", path.display())]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, &args, socket)
    }

    /// Starts the agent with exactly `args`; `Err` carries its stderr if it exits instead.
    pub fn spawn(
        dir: tempfile::TempDir,
        args: &[String],
        socket: PathBuf,
    ) -> Result<AgentProcess, String> {
        let stderr_path = dir.path().join("agent.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
            .args(args)
            .env(
                "FLOTILLA_LOG",
                std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("flotilla-agent ready") => {
                    let http = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("http="))
                        .map(|a| a.parse().unwrap());
                    return Ok(AgentProcess {
                        child,
                        _dir: dir,
                        socket,
                        http,
                        stderr_path,
                    });
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::fs::read_to_string(&stderr_path).unwrap_or_default());
                }
            }
        }
    }

    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.socket.clone())
    }

    pub fn tcp(&self) -> Endpoint {
        Endpoint::Tcp(self.http.expect("agent has a TCP listener"))
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the agent expecting it to fail at start-up; returns its exit status and stderr.
pub fn start_failure(args: &[&str]) -> (ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Element-wise comparison with a relative tolerance (absolute below 1).
pub fn assert_close(actual: &serde_json::Value, expected: &serde_json::Value, tolerance: f64) {
    let flatten = |v: &serde_json::Value| -> Vec<f64> {
        fn walk(v: &serde_json::Value, out: &mut Vec<f64>) {
            match v {
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                other => out.push(
                    other
                        .as_f64()
                        .unwrap_or_else(|| panic!("not a number: {other}")),
                ),
            }
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        out
    };
    let (a, e) = (flatten(actual), flatten(expected));
    assert_eq!(a.len(), e.len(), "lengths differ: {actual} vs {expected}");
    for (x, y) in a.iter().zip(&e) {
        assert!(
            (x - y).abs() <= tolerance * y.abs().max(1.0),
            "{actual} differs from {expected}"
        );
    }
}
