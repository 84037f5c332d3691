//! The hub's network edges to devices: the embedded MQTT broker, the hub's MQTT client and
//! the QUIC artifact endpoint. Only this module touches MQTT and QUIC.

pub mod broker;
pub mod broker_policy;
pub mod mqtt;
pub mod quic;
