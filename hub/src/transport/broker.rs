//! The embedded MQTT broker (rumqttd), for fleets up to ~10,000 devices on one machine.
//! Beyond that, run an external broker (Mosquitto, EMQX) and set `[broker] url` in hub.toml.

use std::net::SocketAddr;

/// Largest MQTT payload the broker accepts. rumqttd's default (20 KiB) is too small for a
/// desired state carrying several signed manifests.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// rumqttd's router has panicked past its connection cap (rumqtt#991); set it deliberately.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Starts rumqttd listening on `listen` (MQTT 3.1.1) in its own threads. rumqttd binds the
/// address itself (its configuration takes an address, not a listener), so unlike the API and
/// QUIC it cannot be handed a bound socket. rumqttd has no shutdown: the broker lives as long
/// as the process.
pub fn start_embedded(listen: SocketAddr) -> Result<(), String> {
    let config = serde_json::json!({
        "id": 0,
        "router": {
            "id": 0,
            "max_connections": MAX_CONNECTIONS,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104857600,
            "max_segment_count": 10
        },
        "v4": {
            "1": {
                "name": "flotilla-v4",
                "listen": listen.to_string(),
                "next_connection_delay_ms": 0,
                "connections": {
                    "connection_timeout_ms": 60000,
                    "max_payload_size": MAX_PAYLOAD_BYTES,
                    "max_inflight_count": 100,
                    "dynamic_filters": true
                }
            }
        }
    });
    let config: rumqttd::Config =
        serde_json::from_value(config).map_err(|e| format!("broker configuration: {e}"))?;
    // Fail early and clearly if the port is taken: rumqttd would only log it from its thread.
    std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen for MQTT on {listen}: {e}"))?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
