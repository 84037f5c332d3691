//! The hub's network edges to devices: the embedded MQTT broker and the hub's MQTT client.
//! Only this module touches MQTT.

pub mod broker;
pub mod mqtt;
