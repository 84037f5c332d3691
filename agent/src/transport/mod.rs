//! The agent's network edges to the hub: HTTP for enrollment and artifact downloads, MQTT
//! for desired state, reports and status. Only this module touches the network to the hub.

pub mod http;
pub mod mqtt;
