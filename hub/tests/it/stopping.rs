//! An agent stops when asked, at every phase: SIGTERM while it retries enrollment against a
//! hub it cannot reach, while it waits for a QUIC handshake in a download, and while it
//! backs off between HTTP download attempts. Each stop is clean (exit status 0) and leaves
//! state the next start carries on from. And under systemd's notify protocol the agent and
//! the hub say READY, ping the watchdog and say STOPPING.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::fleet::{deploy, push};
use crate::support::*;

/// What a stop may take at most before the test calls it hung. The agent is asked to stop
/// within 2 s (systemd's kill timeout is far longer); the margin is for a loaded CI machine.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

fn assert_stopped_cleanly(agent: &mut AgentRun, phase: &str) {
    let (status, took) = agent.terminate(STOP_DEADLINE);
    let status = status.unwrap_or_else(|| {
        panic!(
            "{phase}: SIGTERM did not stop the agent in {STOP_DEADLINE:?}:\n{}",
            agent.log()
        )
    });
    assert!(status.success(), "{phase}: {status}\n{}", agent.log());
    eprintln!("{phase}: stopped in {} ms", took.as_millis());
}

#[test]
fn sigterm_stops_an_agent_retrying_enrollment_against_an_unreachable_hub() {
    let closed = flotilla_testkit::free_port();
    let token = format!("flo_enroll_unreachable.{}", "ab".repeat(32));
    let mut agent = AgentRun::prepare(&format!("https://127.0.0.1:{closed}"), &token, "").unwrap();
    agent.spawn().unwrap();
    // Past the first attempt and into a backoff sleep.
    agent.wait_for_log("cannot enroll yet", 1, Duration::from_secs(30));
    assert_stopped_cleanly(&mut agent, "enrollment retries");
    assert!(
        agent.log().contains("stopped while starting"),
        "{}",
        agent.log()
    );
    // The key it made is kept whole; nothing claims an enrollment that did not happen.
    let key = std::fs::read_to_string(agent.dir.path().join("state/device.key")).unwrap();
    flotilla_common::signing::SigningKey::from_hex(&key).unwrap();
    let attempts = agent.log().matches("cannot enroll yet").count();
    agent.spawn().unwrap();
    agent.wait_for_log("cannot enroll yet", attempts + 1, Duration::from_secs(30));
    assert_stopped_cleanly(&mut agent, "enrollment retries, second start");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_download_stops_and_the_next_start_finishes_the_install() {
    // Artifacts reach the device through a proxy the test unplugs, and QUIC is advertised
    // where nothing answers: the download first waits for a handshake, then falls back to
    // HTTP ranges that are refused and backs off.
    let proxy = TcpProxy::start();
    let silent_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nowhere = silent_udp.local_addr().unwrap();
    let mut hub = HubProcess::init(&format!(
        "advertise_url = \"https://127.0.0.1:{}\"\n[quic]\nadvertise = \"{nowhere}\"\n",
        proxy.port
    ));
    hub.serve();
    proxy.connect_to(hub.url.rsplit(':').next().unwrap().parse().unwrap());
    push(&hub, "scaler_v1.onnx").await;
    let mut agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    proxy.unplug();
    deploy(&hub, "1", "").await;

    // Mid-download, waiting for the QUIC handshake.
    agent.wait_for_log("installing", 1, Duration::from_secs(30));
    assert_stopped_cleanly(&mut agent, "download, QUIC handshake");

    // Mid-download, between refused HTTP attempts.
    agent.restart().unwrap();
    let resumes = agent
        .log()
        .matches("download interrupted; resuming")
        .count();
    agent.wait_for_log(
        "download interrupted; resuming",
        resumes + 1,
        Duration::from_secs(60),
    );
    assert_stopped_cleanly(&mut agent, "download, backoff between attempts");
    assert!(
        !agent.log().contains("installed and serving"),
        "{}",
        agent.log()
    );

    // The link is back: the next start installs what the hub asked for and reports it.
    proxy.plug();
    agent.restart().unwrap();
    agent.wait_serving("scaler", 1);
    wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 1).await;
    assert_stopped_cleanly(&mut agent, "serving");
}

/// A notify socket as systemd makes one: messages are read as they arrive.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    fn env(&self, watchdog_usec: u64) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.path.display().to_string()),
            ("WATCHDOG_USEC".into(), watchdog_usec.to_string()),
        ]
    }

    fn next(&self) -> String {
        let mut buffer = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buffer)
            .expect("a notification within a minute");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    /// Reads until a message satisfying `want`, returning those read on the way too.
    fn until(&self, want: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let message = self.next();
            let done = want(&message);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_and_the_hub_speak_systemds_notify_protocol() {
    // The agent: a status while it starts, READY once it serves, watchdog pings at half
    // of WATCHDOG_USEC, STOPPING at SIGTERM.
    let hub = HubProcess::start();
    let notify = NotifySocket::new();
    let mut agent = AgentRun::prepare(&hub.url, &enroll_token(&hub, "").await, "").unwrap();
    agent.env = notify.env(400_000);
    agent.restart().unwrap();
    let seen = notify.until(|m| m.starts_with("READY=1"));
    assert!(seen[0].starts_with("STATUS=starting"), "{seen:?}");
    let ready = seen.last().unwrap();
    assert!(
        ready.contains(&format!(
            "STATUS=flotilla-agent ready device={}",
            agent.device_id
        )),
        "{ready}"
    );
    for _ in 0..3 {
        assert_eq!(notify.next(), "WATCHDOG=1");
    }
    let (status, _) = agent.terminate(STOP_DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{}", agent.log());
    let rest = notify.until(|m| m == "STOPPING=1");
    assert!(
        rest.iter().all(|m| m == "WATCHDOG=1" || m == "STOPPING=1"),
        "{rest:?}"
    );

    // The hub, the same way.
    let notify = NotifySocket::new();
    let mut hub = HubProcess::init("");
    hub.env = notify.env(400_000);
    hub.serve();
    let ready = notify.next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=flotilla-hub ready api="),
        "{ready}"
    );
    for _ in 0..3 {
        assert_eq!(notify.next(), "WATCHDOG=1");
    }
    hub.stop();
    let rest = notify.until(|m| m == "STOPPING=1");
    assert!(
        rest.iter().all(|m| m == "WATCHDOG=1" || m == "STOPPING=1"),
        "{rest:?}"
    );
}
