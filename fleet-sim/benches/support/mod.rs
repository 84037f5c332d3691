//! What the end-to-end benchmarks share: a real `flotilla-hub` process on free loopback ports, and
//! reading CPU time and memory of processes from /proc.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A binary of the workspace, built beside this bench (`cargo bench --workspace`, or
/// `cargo build --release` first).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run cargo build --release first",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// User + system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    format!(
        "{} cores, {cpu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hub initialised in a temp folder and serving on free ports until dropped.
pub struct Hub {
    pub data: tempfile::TempDir,
    pub api: u16,
    pub quic: u16,
    pub token: String,
    pub pid: u32,
    _child: Killed,
}

impl Hub {
    pub fn start() -> Hub {
        let data = tempfile::tempdir().unwrap();
        let binary = workspace_binary("flotilla-hub");
        let init = Command::new(&binary)
            .args(["init", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        let token = String::from_utf8(init.stdout)
            .unwrap()
            .lines()
            .find(|l| l.starts_with("operator token"))
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned();
        let (api, mqtt, quic) = (free_port(), free_port(), free_udp_port());
        let mut child = Command::new(&binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{api}"),
                "--mqtt-listen",
                &format!("127.0.0.1:{mqtt}"),
                "--quic-listen",
                &format!("127.0.0.1:{quic}"),
                "--data-dir",
            ])
            .arg(data.path())
            .env("FLOTILLA_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(
            line.starts_with("flotilla-hub ready"),
            "the hub did not start (a port taken?); run again"
        );
        Hub {
            pid: child.id(),
            data,
            api,
            quic,
            token,
            _child: Killed(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }
}
