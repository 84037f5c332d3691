//! The hub itself: liveness, Prometheus metrics, root metadata, signing-key rotation and
//! the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api::ErrorBody;
use flotilla_api::admin::{AuditEntry, RotationAnswer};
use flotilla_proto::trust::Envelope;

use super::docs::{OperatorErrors, ReadErrors};
use super::extract::ApiPath;
use super::{ApiError, ApiState, Caller, blocking};
use crate::store::Scope;

/// Liveness: the process serves HTTP.
#[utoipa::path(get, operation_id = "hub_healthz", path = "/healthz", tag = "hub",
    responses((status = 200, description = "The hub is up", content_type = "text/plain", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus text; unauthenticated like most scrape targets, and free of secrets.
#[utoipa::path(get, operation_id = "hub_metrics", path = "/metrics", tag = "hub",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<ApiState>) -> impl axum::response::IntoResponse {
    let registry = state.registry.clone();
    let metrics = state.metrics.clone();
    let text = tokio::task::spawn_blocking(move || metrics.render(registry.store().as_ref()))
        .await
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

fn envelope(text: &str) -> Result<Envelope, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::internal(format!("stored root metadata: {e}")))
}

/// The newest signed root metadata: what agents pin at enrollment.
#[utoipa::path(get, operation_id = "hub_root", path = "/api/v1/root", tag = "hub", security(("bearer" = [])),
    responses((status = 200, description = "The newest root metadata envelope", body = Envelope), ReadErrors))]
pub(super) async fn root(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Envelope>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let text = blocking(move || Ok(registry.store().latest_root()?)).await?;
    let text = text.ok_or_else(|| {
        ApiError::internal(
            "the hub has no root metadata; was it initialised with flotilla-hub init?",
        )
    })?;
    Ok(Json(envelope(&text)?))
}

/// Root metadata by version, for agents walking from the root they trust to the newest.
/// Public: root metadata is signed and holds no secret.
#[utoipa::path(get, operation_id = "hub_root_version", path = "/api/v1/roots/{version}", tag = "devices",
    params(("version" = u64, Path, description = "Root metadata version, from 1")),
    responses(
        (status = 200, description = "The root metadata envelope of that version", body = Envelope),
        (status = 400, description = "The version is not a number", body = ErrorBody),
        (status = 404, description = "No such version (yet)", body = ErrorBody),
        (status = 500, description = "The hub failed", body = ErrorBody)))]
pub(super) async fn root_version(
    State(state): State<ApiState>,
    ApiPath(version): ApiPath<u64>,
) -> Result<Json<Envelope>, ApiError> {
    let registry = state.registry.clone();
    let text = blocking(move || Ok(registry.store().root(version)?)).await?;
    let text =
        text.ok_or_else(|| ApiError::not_found(format!("no root metadata version {version}")))?;
    Ok(Json(envelope(&text)?))
}

/// Rotates the signing key (needs the root key on the hub), re-signs every manifest and
/// desired state, and republishes the desired states.
#[utoipa::path(post, operation_id = "hub_rotate_keys", path = "/api/v1/keys/rotate", tag = "hub", security(("bearer" = [])),
    responses(
        (status = 200, description = "Rotated: root metadata N+1 names the new key", body = RotationAnswer),
        (status = 409, description = "The root key is offline (use flotilla-hub root rotate on the hub machine)", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn rotate_keys(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<RotationAnswer>, ApiError> {
    caller.require(Scope::Operator)?;
    let (registry, fleet) = (state.registry.clone(), state.fleet.clone());
    let actor = caller.name.clone();
    let (root_version, publications) = blocking(move || {
        let version = registry
            .rotate_signing_key(None, &actor)
            .map_err(|e| match e {
                crate::registry::RotationError::DataDir(
                    crate::data_dir::DataDirError::RootKeyOffline,
                ) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
                other => ApiError::internal(other.to_string()),
            })?;
        let publications = match fleet {
            Some(fleet) => fleet.resign_all_desired()?,
            None => Vec::new(),
        };
        Ok((version, publications))
    })
    .await?;
    if let Some(mqtt) = &state.mqtt {
        mqtt.publish_desired(&publications).await;
    }
    Ok(Json(RotationAnswer {
        root_version,
        devices_updated: publications.len(),
    }))
}

/// The newest 200 audit log entries.
#[utoipa::path(get, operation_id = "hub_audit", path = "/api/v1/audit", tag = "hub", security(("bearer" = [])),
    responses((status = 200, description = "Newest first", body = Vec<AuditEntry>), ReadErrors))]
pub(super) async fn audit(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let entries = blocking(move || Ok(registry.store().audit_log(200)?)).await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| AuditEntry {
                id: e.id,
                at: e.at,
                actor: e.actor,
                action: e.action,
                detail: e.detail,
            })
            .collect(),
    ))
}
