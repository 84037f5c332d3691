//! The hub itself: root metadata, signing-key rotation, the audit log, liveness and
//! Prometheus metrics; and the client calls.

use flotilla_proto::trust::Envelope;
use serde::{Deserialize, Serialize};

use crate::client::{AdminClient, ClientError};
use crate::http::Method;

/// `POST /api/v1/keys/rotate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationAnswer {
    /// The new root metadata version, which names the new signing key.
    pub root_version: u64,
    /// Devices whose desired state was re-signed and republished.
    pub devices_updated: usize,
}

/// One change recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// The admin token's name, or the hub component that acted.
    pub actor: String,
    pub action: String,
    pub detail: String,
}

impl AdminClient {
    /// The newest signed root metadata.
    pub async fn root(&self) -> Result<Envelope, ClientError> {
        self.get("/api/v1/root").await
    }

    /// Root metadata by version (public: agents walk the chain with it).
    pub async fn root_version(&self, version: u64) -> Result<Envelope, ClientError> {
        self.get(&format!("/api/v1/roots/{version}")).await
    }

    pub async fn rotate_signing_key(&self) -> Result<RotationAnswer, ClientError> {
        self.call::<(), _>(Method::POST, "/api/v1/keys/rotate", None)
            .await
    }

    /// The newest 200 entries.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, ClientError> {
        self.get("/api/v1/audit").await
    }

    /// The hub's Prometheus text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let answer = self.get_bytes("/metrics").await?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }

    /// Whether the hub answers its liveness check.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.get_bytes("/healthz").await.map(|_| ())
    }
}
