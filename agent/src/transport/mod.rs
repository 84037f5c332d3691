//! The agent's network edges to the hub: QUIC for artifact downloads (HTTP ranges when UDP
//! is blocked), HTTP for enrollment, MQTT
//! for desired state, reports and status. Only this module touches the network to the hub.

pub mod http;
pub mod mqtt;
pub mod quic;
pub mod tls;
