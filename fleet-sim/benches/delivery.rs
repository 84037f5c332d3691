//! Model delivery benchmark (docs/BENCHMARKS.md, issue 3): one 50 MB model to N concurrent
//! downloaders on loopback over QUIC, over the hub's HTTP range endpoint, and with plain
//! curl from a static file server (Python's http.server), in one run; hub CPU for each; and
//! the bytes a patch saves when only the last layer of the model changed.
//!
//! `cargo bench -p flotilla-sim --bench delivery -- [--clients N]` (default 100). Needs
//! deploy/setup.sh (ONNX Runtime, the Python venv that makes the two models) and curl.
//! Downloads go to /dev/shm so the disk is not what is measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::transport::http::HubHttp;
use flotilla_agent::transport::quic::QuicArtifacts;
use flotilla_api::models::PushRequest;
use flotilla_common::artifact_protocol::Encoding;
use flotilla_testkit::measure::{Killed, cpu_seconds, machine};
use flotilla_testkit::{HubProcess, free_port, repo_root as repo};

fn row(path: &str, seconds: f64, bytes: u64, server_cpu: f64, errors: usize) {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "| {path} | {seconds:.2} | {:.2} | {server_cpu:.2} | {errors} |",
        gib / seconds
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args
        .iter()
        .position(|a| a == "--clients")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap())
        .unwrap_or(100);
    let models = repo().join(".cache/bench-models");
    if !models.join("big_v2.onnx").exists() {
        let status = Command::new(repo().join(".cache/venv/bin/python"))
            .arg(repo().join("hub/benches/make_big_models.py"))
            .arg(&models)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "run deploy/setup.sh first");
    }
    // TLS off (loopback): this compares the transfer paths themselves; with TLS on, the
    // range endpoint also wants a device certificate.
    let mut hub = HubProcess::init("[tls]\nenabled = false\n");
    hub.log_level = "error".into();
    hub.serve();
    let port = |address: &str| address.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (hub_pid, api, quic, data) = (
        hub.pid(),
        port(&hub.url),
        port(hub.quic.as_deref().expect("the hub serves QUIC")),
        &hub.dir,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = hub.operator();
    let v1 = std::fs::read(models.join("big_v1.onnx")).unwrap();
    let v2 = std::fs::read(models.join("big_v2.onnx")).unwrap();
    let push_started = Instant::now();
    let pushed1 = runtime
        .block_on(client.push("big", v1.clone().into(), &PushRequest::default()))
        .unwrap();
    let pushed2 = runtime
        .block_on(client.push("big", v2.clone().into(), &PushRequest::default()))
        .unwrap();
    let push_seconds = push_started.elapsed().as_secs_f64();
    let (sha1, sha2) = (pushed1.sha256.clone(), pushed2.sha256.clone());
    let folder = |sha: &str| data.path().join("artifacts/sha256").join(&sha[..2]);
    let size_of = |sha: &str, encoding: &Encoding| {
        std::fs::metadata(folder(sha).join(encoding.file_name(sha)))
            .map(|m| m.len())
            .ok()
    };

    println!(
        "machine: {}; {clients} concurrent downloaders in one process; model {} bytes",
        machine(),
        v1.len()
    );
    println!(
        "pushing both versions (upload, ONNX Runtime check, zstd and patch made by the hub): {push_seconds:.1} s"
    );
    println!();
    println!("Bytes on the wire for version 2 (only its last layer differs from version 1):");
    println!();
    println!("| form | bytes | vs raw |");
    println!("|---|---|---|");
    let raw = v2.len() as u64;
    for (name, encoding) in [
        ("raw", Encoding::Raw),
        ("zstd", Encoding::Zstd),
        (
            "zstd patch from version 1",
            Encoding::Patch {
                base_sha256: sha1.clone(),
            },
        ),
    ] {
        match size_of(&sha2, &encoding) {
            Some(bytes) => println!(
                "| {name} | {bytes} | {:.1}% |",
                bytes as f64 * 100.0 / raw as f64
            ),
            None => println!("| {name} | not made (not smaller than zstd) | |"),
        }
    }

    let shm = if Path::new("/dev/shm").exists() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let downloads = tempfile::tempdir_in(shm).unwrap();
    let size = v1.len() as u64;
    let total = size * clients as u64;
    println!();
    println!("Delivering version 1 ({size} bytes) to {clients} downloaders at once:");
    println!();
    println!("| path | seconds | GiB/s | server CPU s | errors |");
    println!("|---|---|---|---|---|");

    // QUIC.
    let _entered = runtime.enter();
    let quic_client = QuicArtifacts::new(&format!("127.0.0.1:{quic}"), &pin(data.path())).unwrap();
    let before = cpu_seconds(hub_pid);
    let started = Instant::now();
    let errors = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (client, sha, part) = (
                    quic_client.clone(),
                    sha1.clone(),
                    downloads.path().join(format!("q{i}")),
                );
                tokio::spawn(
                    async move { client.download(&sha, &Encoding::Raw, &part, size).await },
                )
            })
            .collect();
        let mut errors = 0;
        for task in tasks {
            errors += task.await.unwrap().is_err() as usize;
        }
        errors
    });
    row(
        "flotilla QUIC (quinn, pinned certificate)",
        started.elapsed().as_secs_f64(),
        total,
        cpu_seconds(hub_pid) - before,
        errors,
    );
    clear(downloads.path());

    // The hub's HTTP range endpoint.
    let http = HubHttp::new(&format!("http://127.0.0.1:{api}"), None).unwrap();
    let before = cpu_seconds(hub_pid);
    let started = Instant::now();
    let errors = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let (http, sha, part) = (
                    http.clone(),
                    sha1.clone(),
                    downloads.path().join(format!("h{i}")),
                );
                tokio::spawn(async move { http.download(&sha, &part, size).await })
            })
            .collect();
        let mut errors = 0;
        for task in tasks {
            errors += task.await.unwrap().is_err() as usize;
        }
        errors
    });
    row(
        "flotilla HTTP range fallback (hub API)",
        started.elapsed().as_secs_f64(),
        total,
        cpu_seconds(hub_pid) - before,
        errors,
    );
    clear(downloads.path());

    // Peer: curl against a static file server with the same file.
    let static_port = free_port();
    let server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &static_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(folder(&sha1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server_pid = server.id();
    let _server = Killed(server);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", static_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = cpu_seconds(server_pid);
    let started = Instant::now();
    let curls: Vec<Child> = (0..clients)
        .map(|i| {
            Command::new("curl")
                .args(["-s", "-f", "-o"])
                .arg(downloads.path().join(format!("c{i}")))
                .arg(format!("http://127.0.0.1:{static_port}/{sha1}"))
                .spawn()
                .unwrap()
        })
        .collect();
    let errors = curls
        .into_iter()
        .map(|mut c| (!c.wait().unwrap().success()) as usize)
        .sum();
    row(
        "curl from Python http.server (peer)",
        started.elapsed().as_secs_f64(),
        total,
        cpu_seconds(server_pid) - before,
        errors,
    );
    clear(downloads.path());
}

fn pin(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(
        std::fs::read(data_dir.join("keys/quic.crt")).unwrap(),
    ))
}

fn clear(folder: &Path) {
    for entry in std::fs::read_dir(folder).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}
