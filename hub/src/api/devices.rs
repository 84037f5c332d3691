//! Device-facing and fleet endpoints: enrollment, deployments, the device inventory, and
//! artifact downloads over HTTP with range requests (the fallback when QUIC is blocked).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_proto::control::EnrollRequest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiError, ApiState, Caller, blocking};
use crate::fleet::FleetError;
use crate::metrics::HubMetrics;
use crate::store::Scope;

impl From<FleetError> for ApiError {
    fn from(error: FleetError) -> ApiError {
        let status = match &error {
            FleetError::UnknownToken => StatusCode::UNAUTHORIZED,
            FleetError::TokenUsed | FleetError::TokenExpired => StatusCode::FORBIDDEN,
            FleetError::BadKey(_) | FleetError::BadSelector(_) => StatusCode::BAD_REQUEST,
            FleetError::NoDevices(_) => StatusCode::NOT_FOUND,
            FleetError::Registry(e) => {
                return ApiError::from(crate::registry::RegistryError::from_ref(e));
            }
            FleetError::Store(_) | FleetError::NoRoot => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

/// Enrollment needs no admin token: the one-time enrollment token is the credential.
pub(super) async fn enroll(
    State(state): State<ApiState>,
    Json(request): Json<EnrollRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let fleet = state
        .fleet
        .clone()
        .ok_or_else(|| ApiError::internal("this hub serves no fleet"))?;
    let response = blocking(move || Ok(fleet.enroll(&request)?)).await;
    let counter = if response.is_ok() {
        &state.metrics.enrollments
    } else {
        &state.metrics.enrollments_refused
    };
    HubMetrics::add(counter, 1);
    let response = response?;
    Ok(Json(
        serde_json::to_value(response).expect("enroll response serializes"),
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeployRequest {
    model: String,
    /// A version number or alias.
    version: String,
    /// `key=value[,key=value]`; empty for every device.
    #[serde(default)]
    selector: String,
}

pub(super) async fn deploy(
    State(state): State<ApiState>,
    caller: Caller,
    Json(request): Json<DeployRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let fleet = state
        .fleet
        .clone()
        .ok_or_else(|| ApiError::internal("this hub serves no fleet"))?;
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
    let devices: Vec<&str> = publications.iter().map(|p| p.device_id.as_str()).collect();
    Ok(Json(
        serde_json::json!({"model": model, "version": version, "selector": selector, "devices": devices}),
    ))
}

pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let devices = blocking(move || Ok(registry.store().devices()?)).await?;
    Ok(Json(
        serde_json::to_value(devices).expect("devices serialize"),
    ))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let device = registry
            .store()
            .device(&id)?
            .ok_or_else(|| ApiError::not_found(format!("unknown device {id:?}")))?;
        let desired = registry.store().desired(&id)?;
        let mut value = serde_json::to_value(device).expect("device serializes");
        value["desired_sequence"] = desired.as_ref().map(|d| d.sequence).into();
        value["desired_models"] = desired
            .map(|d| serde_json::from_str(&d.models).unwrap_or_default())
            .unwrap_or(serde_json::json!([]));
        Ok(Json(value))
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

/// Artifacts by content hash. Whoever downloads must check the hash and the signed
/// manifest before trusting a byte (agents do).
pub(super) async fn artifact(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
