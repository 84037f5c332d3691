//! The control plane between hub and agents (docs/protocols.md): enrollment over HTTP,
//! then MQTT topics under `flotilla/v1/`. Every message an agent or the hub publishes is an
//! `Envelope` signed by the sender's key, so even a broker without ACLs cannot let one
//! party speak for another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trust::{Envelope, PublicKey};

/// Payload type of a device's desired state, signed by the hub's signing key.
pub const DESIRED_PAYLOAD_TYPE: &str = "application/vnd.flotilla.desired+json";
/// Payload type of a device's reported state, signed by the device key.
pub const REPORTED_PAYLOAD_TYPE: &str = "application/vnd.flotilla.reported+json";
/// Payload type of a device's online/offline status, signed by the device key.
pub const STATUS_PAYLOAD_TYPE: &str = "application/vnd.flotilla.status+json";

/// Topic names. Hub consumers use shared subscriptions (`$share/hub/...`) so several hub
/// replicas can split the load on a clustered broker.
pub mod topics {
    pub const PREFIX: &str = "flotilla/v1/devices";

    pub fn desired(device_id: &str) -> String {
        format!("{PREFIX}/{device_id}/desired")
    }
    pub fn reported(device_id: &str) -> String {
        format!("{PREFIX}/{device_id}/reported")
    }
    pub fn status(device_id: &str) -> String {
        format!("{PREFIX}/{device_id}/status")
    }
    /// What the hub subscribes to for every device's reports and status. One share group
    /// per filter: some brokers (rumqttd) rotate a group across all its filters, which would
    /// drop messages.
    pub const HUB_REPORTED: &str = "$share/hub-reported/flotilla/v1/devices/+/reported";
    pub const HUB_STATUS: &str = "$share/hub-status/flotilla/v1/devices/+/status";

    /// The device id in a `flotilla/v1/devices/{id}/...` topic.
    pub fn device_of(topic: &str) -> Option<&str> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let (id, _) = rest.split_once('/')?;
        (!id.is_empty()).then_some(id)
    }
}

/// Payload type of a certificate renewal, signed by the device key.
pub const RENEWAL_PAYLOAD_TYPE: &str = "application/vnd.flotilla.certificate-renewal+json";

/// `POST /api/v1/devices/{id}/certificate`, as the payload of an envelope signed by the
/// device's enrolled key: a new client certificate for that key. Works whether or not the
/// current certificate has lapsed, so a device that was offline past its expiry re-proves
/// itself the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRenewal {
    pub device_id: String,
    /// Unix seconds on the device's clock; the hub refuses one far from its own.
    pub at: i64,
}

/// A renewed device certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewedCertificate {
    /// The device's client certificate, then the CA's (PEM).
    pub certificate: String,
    pub certificate_expires: i64,
}

/// Payload type of an enrollment's proof of possession, signed by the enrolling key.
pub const ENROLL_PROOF_PAYLOAD_TYPE: &str = "application/vnd.flotilla.enroll-proof+json";

/// `POST /api/v1/enroll`: a device presents a one-time token and its own public key, and
/// proves it holds the private half by signing the request (`proof`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub public_key: PublicKey,
    #[serde(default)]
    pub hardware: BTreeMap<String, String>,
    pub agent_version: String,
    /// Hex ed25519 signature by `public_key` over the DSSE encoding of `proof_payload()`
    /// as `application/vnd.flotilla.enroll-proof+json`: without the private key, a stolen
    /// token and a known public key cannot enroll (or re-enroll) that device.
    pub proof: String,
}

impl EnrollRequest {
    /// What the proof signs: the token and every claim, so none can be swapped after
    /// signing, and a proof made with one token is worthless with another.
    pub fn proof_payload(&self) -> String {
        serde_json::json!({
            "token": self.token,
            "public_key": self.public_key,
            "hardware": self.hardware,
            "agent_version": self.agent_version,
        })
        .to_string()
    }
}

/// What an enrolled device needs to talk to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    pub device_id: String,
    /// The hub's current root metadata: the device pins it.
    pub root: Envelope,
    /// MQTT broker address, `HOST:PORT`.
    pub mqtt: String,
    /// Whether the broker speaks MQTT over TLS: the device then trusts only the hub's CA
    /// there and presents its certificate (the broker lets it touch only its own topics).
    #[serde(default)]
    pub mqtt_tls: bool,
    /// Base URL for artifact downloads over HTTP (range requests supported).
    pub artifacts_http: String,
    /// QUIC artifact endpoint, `IP:PORT`, when the hub runs one.
    #[serde(default)]
    pub artifacts_quic: Option<String>,
    /// Hex SHA-256 of the hub's QUIC certificate: the only certificate the agent accepts.
    #[serde(default)]
    pub quic_certificate_sha256: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The hub's CA certificate (PEM): what the device trusts for TLS from now on. Its
    /// SHA-256 is the fingerprint the enrollment token carried.
    pub ca_certificate: String,
    /// The device's client certificate for the key it enrolled, then the CA's (PEM).
    pub certificate: String,
    /// When the certificate expires (unix seconds).
    pub certificate_expires: i64,
}

/// The models a device should run, signed by the hub; published retained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub device_id: String,
    /// The version of the root metadata that names the key signing this. Devices order
    /// desired states by `(root_version, sequence)`: after the hub rotates away from a
    /// leaked signing key, its next desired state outranks anything the leaked key signed,
    /// whatever sequence that claimed.
    pub root_version: u64,
    /// Grows with every change for this device: an older desired state is ignored.
    pub sequence: u64,
    pub issued: i64,
    pub expires: i64,
    pub models: Vec<DesiredModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredModel {
    pub name: String,
    pub version: u64,
    /// The version's signed manifest.
    pub manifest: Envelope,
    /// True when this is a deliberate move back to an older version.
    #[serde(default)]
    pub rollback: bool,
}

/// Where an install got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstallState {
    Downloading,
    Verifying,
    Loading,
    Installed,
    Failed,
}

impl InstallState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Downloading => "downloading",
            InstallState::Verifying => "verifying",
            InstallState::Loading => "loading",
            InstallState::Installed => "installed",
            InstallState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallOutcome {
    pub model: String,
    pub version: u64,
    pub state: InstallState,
    /// The step that failed (download, verify, load, smoke_test, switch), when failed.
    #[serde(default)]
    pub step: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    pub at: i64,
}

/// What a device runs and how its installs went; signed by the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedState {
    pub device_id: String,
    /// The desired-state sequence this report answers.
    pub desired_sequence: u64,
    pub at: i64,
    pub agent_version: String,
    /// Model name to the version being served.
    pub serving: BTreeMap<String, u64>,
    pub outcomes: Vec<InstallOutcome>,
}

/// Online/offline, published retained (offline as the MQTT last will).
///
/// Freshness is bound into the signature: `(epoch, beat)` only ever grows on a device, so
/// the hub refuses a replayed status (an old `online` that would make a dead device look
/// alive, an old last will that would mark a live one offline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStatus {
    pub device_id: String,
    pub online: bool,
    /// When the agent process that sent this started following the hub (unix seconds).
    pub connected_at: i64,
    /// The connection this status belongs to: larger for every new connection, across
    /// restarts too (the agent persists where it got to).
    pub epoch: u64,
    /// Within a connection: 0 for the status at connect, one more for each heartbeat, and
    /// `FINAL_BEAT` for the last will, after which nothing of that connection is taken.
    pub beat: u64,
}

/// The beat of a last will: the end of its connection.
pub const FINAL_BEAT: u64 = i64::MAX as u64;

impl DeviceStatus {
    /// The order statuses of one device are taken in.
    pub fn freshness(&self) -> (u64, u64) {
        (self.epoch, self.beat)
    }
}

#[cfg(test)]
mod tests {
    use super::topics;

    #[test]
    fn device_ids_come_out_of_topics() {
        assert_eq!(topics::device_of(&topics::reported("dev-1")), Some("dev-1"));
        assert_eq!(topics::device_of("flotilla/v1/devices//reported"), None);
        assert_eq!(topics::device_of("other/v1/devices/x/reported"), None);
    }
}
