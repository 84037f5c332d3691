//! Devices: enrollment tokens, deployments by label selector, the inventory; and the
//! client calls. Enrollment itself (`POST /api/v1/enroll`) is the device's call, with the
//! types of `flotilla_proto::control`.

use std::collections::BTreeMap;

use flotilla_proto::control::{DesiredModel, InstallOutcome};
use flotilla_proto::trust::PublicKey;
use serde::{Deserialize, Serialize};

use crate::client::{AdminClient, ClientError, escape};
use crate::http::Method;
use crate::selector::{LabelSelector, Labels};

/// `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenRequest {
    /// Labels the enrolled device gets.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    /// How long the token is valid, in seconds (1 to a year).
    pub ttl_seconds: i64,
    /// How many devices may enroll with it: 1 (the default) for a one-time token, more for
    /// a claim token flashed into many devices' images (each use enrolls one new device
    /// with its own key and certificate).
    #[serde(default = "one_use")]
    pub uses: u32,
}

fn one_use() -> u32 {
    1
}

/// Most devices one claim token may enroll.
pub const MAX_TOKEN_USES: u32 = 100_000;

/// An enrollment token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollmentToken {
    pub token: String,
    /// Names the token in `GET /api/v1/enrollment-tokens` and for revoking it.
    pub id: String,
    /// Unix seconds.
    pub expires: i64,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    /// How many devices may enroll with it.
    pub uses: u32,
}

/// An enrollment token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollmentTokenView {
    pub id: String,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    pub created: i64,
    pub expires: i64,
    /// Devices it may enroll, and has enrolled.
    pub uses_allowed: u32,
    pub uses: u32,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// `POST /api/v1/deployments`: set a model version as desired on every matching device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub model: String,
    /// A version number or alias.
    pub version: String,
    /// Empty: every device.
    #[serde(default)]
    pub selector: LabelSelector,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployAnswer {
    pub model: String,
    pub version: u64,
    pub selector: LabelSelector,
    /// The devices whose desired state changed.
    pub devices: Vec<String>,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub id: String,
    /// The key the device signs its reports and telemetry with.
    pub public_key: PublicKey,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    pub hardware: BTreeMap<String, String>,
    pub agent_version: String,
    /// Unix seconds.
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub online: bool,
    /// Model name to the version the device reports serving.
    pub serving: BTreeMap<String, u64>,
    /// The latest install outcome per model the device reported.
    pub last_outcomes: Vec<InstallOutcome>,
    /// The desired-state sequence its last report answered.
    pub reported_sequence: u64,
    /// When it was revoked (decommissioned), if it was.
    pub revoked_at: Option<i64>,
}

/// `GET /api/v1/devices/{id}`: the device and the desired state the hub last set for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceView,
    pub desired_sequence: Option<u64>,
    pub desired_models: Vec<DesiredModel>,
}

impl AdminClient {
    pub async fn create_enrollment_token(
        &self,
        request: &EnrollmentTokenRequest,
    ) -> Result<EnrollmentToken, ClientError> {
        self.call(Method::POST, "/api/v1/enrollment-tokens", Some(request))
            .await
    }

    /// Every enrollment token, newest first.
    pub async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenView>, ClientError> {
        self.get("/api/v1/enrollment-tokens").await
    }

    /// Revokes a token: no device enrolls with it any more.
    pub async fn revoke_enrollment_token(
        &self,
        id: &str,
    ) -> Result<EnrollmentTokenView, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/enrollment-tokens/{}", escape(id)),
            None,
        )
        .await
    }

    pub async fn deploy(&self, request: &DeployRequest) -> Result<DeployAnswer, ClientError> {
        self.call(Method::POST, "/api/v1/deployments", Some(request))
            .await
    }

    pub async fn devices(&self) -> Result<Vec<DeviceView>, ClientError> {
        self.get("/api/v1/devices").await
    }

    pub async fn device(&self, id: &str) -> Result<DeviceDetail, ClientError> {
        self.get(&format!("/api/v1/devices/{}", escape(id))).await
    }

    /// Decommissions a device: its certificates revoked, its downloads, renewals, reports
    /// and telemetry refused from now on; its record stays.
    pub async fn revoke_device(&self, id: &str) -> Result<DeviceView, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/devices/{}/revoke", escape(id)),
            None,
        )
        .await
    }

    /// Forgets a device.
    pub async fn remove_device(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/devices/{}", escape(id)),
            None,
        )
        .await
        .map(drop)
    }
}
