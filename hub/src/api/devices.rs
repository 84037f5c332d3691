//! Device-facing and fleet endpoints: enrollment tokens and enrollment, deployments, the
//! device inventory, and artifact downloads over HTTP with range requests (the fallback
//! when QUIC is blocked).

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_api::ErrorBody;
use flotilla_api::devices::{
    DeployAnswer, DeployRequest, DeviceDetail, DeviceView, EnrollmentToken, EnrollmentTokenRequest,
    EnrollmentTokenView, MAX_TOKEN_USES,
};
use flotilla_proto::control::{DesiredModel, EnrollRequest, EnrollResponse, RenewedCertificate};
use flotilla_proto::trust::Envelope;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::docs::{OperatorErrors, ReadErrors};
use super::extract::{ApiJson, ApiPath};
use super::listener::Peer;
use super::{ApiError, ApiState, Caller, blocking};
use crate::data_dir::{new_token, token_hash};
use crate::fleet::FleetError;
use crate::metrics::HubMetrics;
use crate::store::{DeviceRecord, EnrollmentTokenRecord, Scope};

/// A token is a credential: one that outlives a year is a leak waiting to happen, and the
/// bound keeps `now + ttl` far from overflowing.
const MAX_ENROLLMENT_TOKEN_TTL_SECONDS: i64 = 366 * 24 * 3600;

/// The enrolled device a connection's client certificate belongs to (`certificate_holder`).
fn device_of_certificate(
    registry: &crate::registry::Registry,
    peer: &Peer,
) -> Result<String, ApiError> {
    use crate::fleet::{CertificateRefusal, certificate_holder};
    certificate_holder(
        registry.store().as_ref(),
        peer.client_certificate_sha256.as_deref(),
    )
    .map_err(|refusal| {
        let status = match refusal {
            CertificateRefusal::Missing | CertificateRefusal::NotIssued => StatusCode::UNAUTHORIZED,
            CertificateRefusal::Revoked(ref device) => {
                tracing::warn!(%device, address = %peer.address, "download refused: certificate revoked");
                StatusCode::FORBIDDEN
            }
            CertificateRefusal::Store(error) => return ApiError::from(error),
        };
        ApiError::new(status, refusal.to_string())
    })
}

impl From<FleetError> for ApiError {
    fn from(error: FleetError) -> ApiError {
        let status = match &error {
            FleetError::UnknownToken | FleetError::NoProofOfPossession => StatusCode::UNAUTHORIZED,
            FleetError::TokenUsed | FleetError::TokenExpired | FleetError::TokenRevoked => {
                StatusCode::FORBIDDEN
            }
            FleetError::BadKey(_) => StatusCode::BAD_REQUEST,
            FleetError::UnknownDevice(_) => StatusCode::NOT_FOUND,
            FleetError::DeviceRevoked(_) => StatusCode::FORBIDDEN,
            FleetError::RenewalNotProven(_) | FleetError::RenewalStale { .. } => {
                StatusCode::UNAUTHORIZED
            }
            FleetError::NoDevices(_) => StatusCode::NOT_FOUND,
            FleetError::Registry(e) => {
                return ApiError::from(crate::registry::RegistryError::from_ref(e));
            }
            FleetError::Store(_) | FleetError::NoRoot | FleetError::NoCa | FleetError::Ca(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error.to_string())
    }
}

fn fleet(state: &ApiState) -> Result<std::sync::Arc<crate::fleet::Fleet>, ApiError> {
    state
        .fleet
        .clone()
        .ok_or_else(|| ApiError::internal("this hub serves no fleet"))
}

/// Creates an enrollment token (shown once): one-time, or a claim token for `uses` devices.
#[utoipa::path(post, operation_id = "devices_create_enrollment_token", path = "/api/v1/enrollment-tokens", tag = "devices",
    security(("bearer" = [])),
    request_body = EnrollmentTokenRequest,
    responses(
        (status = 200, body = EnrollmentToken),
        (status = 400, description = "ttl_seconds is not between 1 and a year, uses not between 1 and 100000, or the body is not the request", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn create_enrollment_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<EnrollmentTokenRequest>,
) -> Result<Json<EnrollmentToken>, ApiError> {
    caller.require(Scope::Operator)?;
    if !(1..=MAX_ENROLLMENT_TOKEN_TTL_SECONDS).contains(&request.ttl_seconds) {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {MAX_ENROLLMENT_TOKEN_TTL_SECONDS} (a year), not {}",
            request.ttl_seconds
        )));
    }
    if !(1..=MAX_TOKEN_USES).contains(&request.uses) {
        return Err(ApiError::bad_request(format!(
            "uses must be between 1 and {MAX_TOKEN_USES}, not {}",
            request.uses
        )));
    }
    let registry = state.registry.clone();
    let ca_fingerprint = fleet(&state)?.ca_fingerprint();
    blocking(move || {
        let secret = new_token("flo_enroll").map_err(|e| ApiError::internal(e.to_string()))?;
        // The CA's fingerprint rides along (as kubeadm's discovery hash does), so the
        // device's first TLS contact already knows which hub to trust.
        let token = match ca_fingerprint {
            Some(fingerprint) => format!("{secret}.{fingerprint}"),
            None => secret,
        };
        let now = registry.now();
        let expires = now.saturating_add(request.ttl_seconds);
        let hash = token_hash(&token);
        registry.store().insert_enrollment_token(
            &hash,
            &request.labels,
            expires,
            request.uses,
            now,
        )?;
        let id = hash[..12].to_owned();
        registry.store().audit(
            now,
            &caller.name,
            "enroll_token.create",
            &format!(
                "{id}: labels {:?}, {} uses, expires {expires}",
                request.labels, request.uses
            ),
        )?;
        Ok(Json(EnrollmentToken {
            token,
            id,
            expires,
            labels: request.labels,
            uses: request.uses,
        }))
    })
    .await
}

fn token_view(record: EnrollmentTokenRecord) -> EnrollmentTokenView {
    EnrollmentTokenView {
        id: record.id,
        labels: record.labels,
        created: record.created,
        expires: record.expires,
        uses_allowed: record.uses_allowed,
        uses: record.uses,
        revoked_at: record.revoked_at,
    }
}

/// Every enrollment token, newest first (never the secrets).
#[utoipa::path(get, operation_id = "devices_list_enrollment_tokens", path = "/api/v1/enrollment-tokens", tag = "devices",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<EnrollmentTokenView>),
        OperatorErrors))]
pub(super) async fn list_enrollment_tokens(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<EnrollmentTokenView>>, ApiError> {
    caller.require(Scope::Operator)?;
    let registry = state.registry.clone();
    blocking(move || {
        let tokens = registry.store().enrollment_tokens()?;
        Ok(Json(tokens.into_iter().map(token_view).collect()))
    })
    .await
}

/// Revokes an enrollment token: no device enrolls with it any more (those enrolled stay).
#[utoipa::path(delete, operation_id = "devices_revoke_enrollment_token", path = "/api/v1/enrollment-tokens/{id}", tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's id (from its creation or the list)")),
    responses(
        (status = 200, description = "Revoked (or already revoked)", body = EnrollmentTokenView),
        (status = 404, description = "No token has that id", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn revoke_enrollment_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EnrollmentTokenView>, ApiError> {
    caller.require(Scope::Operator)?;
    let registry = state.registry.clone();
    blocking(move || {
        let now = registry.now();
        let revoked = registry
            .store()
            .revoke_enrollment_token(&id, now)?
            .ok_or_else(|| ApiError::not_found(format!("no enrollment token has id {id:?}")))?;
        registry
            .store()
            .audit(now, &caller.name, "enroll_token.revoke", &id)?;
        Ok(Json(token_view(revoked)))
    })
    .await
}

/// Device enrollment: the one-time enrollment token is the credential (no admin token).
#[utoipa::path(post, operation_id = "devices_enroll", path = "/api/v1/enroll", tag = "devices",
    request_body = EnrollRequest,
    responses(
        (status = 200, description = "Enrolled: what the device needs to follow the hub", body = EnrollResponse),
        (status = 400, description = "The public key is not valid, or the body is not the request", body = ErrorBody),
        (status = 401, description = "Unknown enrollment token, or the request is not signed by the key it enrolls", body = ErrorBody),
        (status = 403, description = "The token was used or has expired", body = ErrorBody),
        (status = 500, description = "The hub failed", body = ErrorBody)))]
pub(super) async fn enroll(
    State(state): State<ApiState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let fleet = fleet(&state)?;
    let response = blocking(move || Ok(fleet.enroll(&request)?)).await;
    let counter = if response.is_ok() {
        &state.metrics.enrollments
    } else {
        &state.metrics.enrollments_refused
    };
    HubMetrics::add(counter, 1);
    Ok(Json(response?))
}

/// A new client certificate for a device, asked for with an envelope signed by the key it
/// enrolled with (no admin token: the signature is the credential). Works after the current
/// certificate has lapsed too.
#[utoipa::path(post, operation_id = "devices_renew_certificate", path = "/api/v1/devices/{id}/certificate", tag = "devices",
    params(("id" = String, Path, description = "The device id")),
    request_body(content = Envelope, description = "A signed `application/vnd.flotilla.certificate-renewal+json`: {device_id, at}"),
    responses(
        (status = 200, description = "The new certificate", body = RenewedCertificate),
        (status = 400, description = "The body is not an envelope", body = ErrorBody),
        (status = 401, description = "Not signed by the device's key, or made too far from the hub's clock", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 500, description = "The hub failed", body = ErrorBody)))]
pub(super) async fn renew_certificate(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(envelope): ApiJson<Envelope>,
) -> Result<Json<RenewedCertificate>, ApiError> {
    let fleet = fleet(&state)?;
    blocking(move || {
        fleet.renew_certificate(&id, &envelope).map_err(|error| {
            tracing::warn!(device = %id, %error, "certificate renewal refused");
            ApiError::from(error)
        })
    })
    .await
    .map(Json)
}

/// Sets a model version (or alias) as desired on the devices matching a label selector.
#[utoipa::path(post, operation_id = "devices_deploy", path = "/api/v1/deployments", tag = "devices",
    security(("bearer" = [])),
    request_body = DeployRequest,
    responses(
        (status = 200, body = DeployAnswer),
        (status = 400, description = "A bad selector or body", body = ErrorBody),
        (status = 404, description = "Unknown model or version, or no device matches", body = ErrorBody),
        (status = 409, description = "The version is retired", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn deploy(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<Json<DeployAnswer>, ApiError> {
    caller.require(Scope::Operator)?;
    let fleet = fleet(&state)?;
    let actor = caller.name.clone();
    let (model, selector) = (request.model.clone(), request.selector.clone());
    let (version, publications) = blocking(move || {
        Ok(fleet.deploy(&request.model, &request.version, &request.selector, &actor)?)
    })
    .await?;
    if let Some(mqtt) = &state.mqtt {
        mqtt.publish_desired(&publications).await;
        HubMetrics::add(&state.metrics.deployments, 1);
    }
    Ok(Json(DeployAnswer {
        model,
        version,
        selector,
        devices: publications.into_iter().map(|p| p.device_id).collect(),
    }))
}

fn device_view(record: DeviceRecord) -> DeviceView {
    DeviceView {
        id: record.id,
        public_key: record.public_key,
        labels: record.labels,
        hardware: record.hardware,
        agent_version: record.agent_version,
        enrolled_at: record.enrolled_at,
        last_seen: record.last_seen,
        online: record.online,
        serving: record.serving,
        last_outcomes: record.last_outcomes,
        reported_sequence: record.reported_sequence,
        revoked_at: record.revoked_at,
    }
}

/// Decommissions a device: its certificates are revoked and its downloads, renewals,
/// reports and telemetry refused from now on; it stays listed, with its history.
#[utoipa::path(post, operation_id = "devices_revoke", path = "/api/v1/devices/{id}/revoke", tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Revoked (or already revoked)", body = DeviceView),
        (status = 404, description = "Unknown device", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceView>, ApiError> {
    caller.require(Scope::Operator)?;
    let fleet = fleet(&state)?;
    let registry = state.registry.clone();
    let device = id.clone();
    let view = blocking(move || {
        fleet.revoke_device(&id, &caller.name)?;
        tracing::warn!(device = %id, by = %caller.name, "device revoked");
        let record = registry
            .store()
            .device(&id)?
            .ok_or_else(|| ApiError::not_found(format!("no device {id}")))?;
        Ok(Json(device_view(record)))
    })
    .await?;
    drop_broker_connection(&state, &device).await;
    Ok(view)
}

/// Drops a revoked or removed device's connection to the embedded broker, which refuses it
/// from then on. (An external broker keeps the connection until it ends; the hub refuses
/// what the device sends either way.)
async fn drop_broker_connection(state: &ApiState, device: &str) {
    if let Some(broker) = &state.broker
        && broker.disconnect(device).await
    {
        tracing::warn!(%device, "broker connection dropped");
    }
}

/// Forgets a device and its desired state (the audit log keeps what happened; its
/// certificates stay revoked).
#[utoipa::path(delete, operation_id = "devices_remove", path = "/api/v1/devices/{id}", tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Removed", body = Object),
        (status = 404, description = "Unknown device", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let fleet = fleet(&state)?;
    let device = id.clone();
    let answer = blocking(move || {
        fleet.remove_device(&id, &caller.name)?;
        Ok(Json(serde_json::json!({"removed": id})))
    })
    .await?;
    drop_broker_connection(&state, &device).await;
    Ok(answer)
}

/// Enrolled devices: labels, hardware, online, last seen, serving versions, last install
/// outcomes.
#[utoipa::path(get, operation_id = "devices_list", path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<DeviceView>), ReadErrors))]
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let devices = blocking(move || Ok(registry.store().devices()?)).await?;
    Ok(Json(devices.into_iter().map(device_view).collect()))
}

/// One device with the desired state the hub last set for it.
#[utoipa::path(get, operation_id = "devices_show", path = "/api/v1/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, body = DeviceDetail),
        (status = 404, description = "Unknown device", body = ErrorBody),
        ReadErrors))]
pub(super) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let device = registry
            .store()
            .device(&id)?
            .ok_or_else(|| ApiError::not_found(format!("unknown device {id:?}")))?;
        let desired = registry.store().desired(&id)?;
        let desired_models: Vec<DesiredModel> = match &desired {
            Some(d) => serde_json::from_str(&d.models)
                .map_err(|e| ApiError::internal(format!("stored desired state: {e}")))?,
            None => Vec::new(),
        };
        Ok(Json(DeviceDetail {
            device: device_view(device),
            desired_sequence: desired.map(|d| d.sequence),
            desired_models,
        }))
    })
    .await
}

/// Parses `Range: bytes=START-` or `bytes=START-END`; `None` for no header.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let spec = text.strip_prefix("bytes=").ok_or_else(|| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("unsupported range {text:?}"),
        )
    })?;
    let (start, end) = spec.split_once('-').ok_or_else(|| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("unsupported range {text:?}"),
        )
    })?;
    let start: u64 = start.parse().map_err(|_| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("unsupported range {text:?}"),
        )
    })?;
    let end: u64 = if end.is_empty() {
        size.saturating_sub(1)
    } else {
        end.parse()
            .map_err(|_| ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "bad range end"))?
    };
    if start >= size || end < start {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("range {text:?} is outside the {size} bytes"),
        ));
    }
    Ok(Some((start, end.min(size - 1))))
}

/// An artifact by content hash, whole or a byte range (`Range: bytes=START-[END]`). Whoever
/// downloads must check the hash and the signed manifest before trusting a byte (agents
/// do).
#[utoipa::path(get, operation_id = "devices_artifact", path = "/api/v1/artifacts/{sha256}", tag = "devices",
    params(("sha256" = String, Path, description = "The artifact's 64-hex-digit SHA-256"),
           ("range" = Option<String>, Header, description = "bytes=START- or bytes=START-END")),
    responses(
        (status = 200, description = "The whole artifact", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Not a SHA-256", body = ErrorBody),
        (status = 401, description = "Over TLS: no device certificate from this hub's CA was presented", body = ErrorBody),
        (status = 403, description = "The device's certificate was revoked", body = ErrorBody),
        (status = 404, description = "No such artifact", body = ErrorBody),
        (status = 416, description = "The range is outside the artifact or not understood", body = ErrorBody),
        (status = 500, description = "The artifact cannot be opened", body = ErrorBody)))]
pub(super) async fn artifact(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    ApiPath(sha256): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.device_certificates_required {
        let registry = state.registry.clone();
        blocking(move || device_of_certificate(&registry, &peer)).await?;
    }
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "artifacts are named by their 64-hex-digit SHA-256",
        ));
    }
    let path = state.registry.artifact_path(&sha256);
    // Only a missing file is a 404: anything else (out of file handles, say) is the hub's
    // trouble and says so.
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::not_found(format!("no artifact {sha256}")),
            _ => ApiError::internal(format!("cannot open artifact {sha256}: {e}")),
        })?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    let (status, start, end) = match parse_range(&headers, size)? {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
    };
    let length = if size == 0 { 0 } else { end - start + 1 };
    HubMetrics::add(&state.metrics.artifact_bytes_served, length);
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(length), 256 * 1024);
    let mut response = (status, Body::from_stream(stream)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, length.into());
    headers.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{size}")
                .parse()
                .expect("a valid header"),
        );
    }
    Ok(response)
}
