//! Test support: the shared test kit's real processes, and the few helpers these tests
//! phrase their own way.

pub use flotilla_testkit::{
    AgentRun, HubProcess, Mosquitto, RawApi, TcpProxy, fixture, stderr_of_failure, stdout,
};

/// A loopback UDP port free right now (a QUIC endpoint another process binds).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-time enrollment token with `labels` (k=v,k=v), valid ten minutes.
pub async fn enroll_token(hub: &HubProcess, labels: &str) -> String {
    hub.enroll_token(labels).await
}
