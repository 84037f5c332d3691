//! `Mosquitto`: a real Mosquitto broker (Debian package `mosquitto`, which deploy/setup.sh
//! installs) on a loopback port, for the external-broker tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// A Mosquitto broker (Debian package `mosquitto`, installed by .ci/run) on a free port.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// What the broker logged (stderr).
    pub log: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// An open broker: plain MQTT, anonymous clients, no ACL.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        Self::run(&config, port, dir)
    }

    /// A broker on `port` with the settings in `config` (which must listen there).
    pub fn run(config: &Path, port: u16, dir: tempfile::TempDir) -> Mosquitto {
        let child = Self::spawn(config, port, &dir);
        Mosquitto {
            child,
            port,
            log: dir.path().join("mosquitto.log"),
            config: config.to_owned(),
            dir,
        }
    }

    /// The folder the broker's files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the broker (SIGTERM) and starts it again with the same settings: how
    /// Mosquitto rereads what it reads only at start (a revocation list, say).
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.config, self.port, &self.dir);
    }

    fn spawn(config: &Path, port: u16, dir: &tempfile::TempDir) -> Child {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let binary = binary.expect("mosquitto is not installed: run deploy/setup.sh (as root it installs the Debian package), or apt-get install mosquitto");
        let log = dir.path().join("mosquitto.log");
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "mosquitto did not start on port {port}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
