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

#[derive(Debug)]
pub struct HubProcess {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub operator_token: String,
    pub read_token: String,
}

impl HubProcess {
    /// `flotilla-hub init` in a temp folder, then `serve` on a free loopback port.
    pub fn start() -> HubProcess {
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
            operator_token: token("operator token"),
            read_token: token("read-only token"),
            dir,
        };
        hub.serve();
        hub
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
                "127.0.0.1:0",
                "--mqtt-listen",
                &format!("127.0.0.1:{}", free_port()),
                "--data-dir",
            ])
            .arg(self.dir.path())
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
