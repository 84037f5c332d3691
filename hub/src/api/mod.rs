//! The admin REST API (JSON over HTTP, bearer tokens with read or operator scope). The
//! `flotilla` CLI is a client of this API and nothing else. Only this module knows HTTP DTOs.

mod auth;
mod devices;
mod error;
mod models;
mod openapi;
mod rollouts;
mod telemetry;
mod triggers;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

pub use auth::Caller;
pub use error::ApiError;

use crate::data_dir::{new_token, token_hash};
use crate::registry::Registry;
use crate::store::Scope;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    /// Largest model upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// Where uploads are spooled while they arrive (inside the data folder, so the final
    /// rename into the artifact store never crosses file systems).
    pub upload_dir: std::path::PathBuf,
    /// Devices and deployments; absent in a registry-only hub.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// Where desired states are published.
    pub mqtt: Option<crate::transport::mqtt::HubMqtt>,
    pub metrics: Arc<crate::metrics::HubMetrics>,
    /// Drift and health reports; absent in a registry-only hub.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Rollouts in waves; absent in a registry-only hub.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    /// Retraining triggers; absent in a registry-only hub.
    pub triggers: Option<Arc<crate::triggers::Triggers>>,
}

pub fn router(state: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/api/v1/root", get(root))
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/{model}", get(models::show))
        .route("/api/v1/models/{model}/versions", post(models::push))
        .route(
            "/api/v1/models/{model}/versions/{version}",
            get(models::version),
        )
        .route(
            "/api/v1/models/{model}/versions/{version}/manifest",
            get(models::manifest),
        )
        .route(
            "/api/v1/models/{model}/versions/{version}/retire",
            post(models::retire),
        )
        .route(
            "/api/v1/models/{model}/quality-gate",
            get(models::get_quality_gate).put(models::put_quality_gate),
        )
        .route(
            "/api/v1/models/{model}/aliases/{alias}",
            put(models::set_alias).delete(models::remove_alias),
        )
        .route("/api/v1/enrollment-tokens", post(create_enrollment_token))
        .route("/api/v1/enroll", post(devices::enroll))
        .route("/api/v1/roots/{version}", get(root_version))
        .route("/api/v1/keys/rotate", post(rotate_keys))
        .route("/api/v1/deployments", post(devices::deploy))
        .route("/api/v1/devices", get(devices::list))
        .route(
            "/api/v1/rollouts",
            post(rollouts::create).get(rollouts::list),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::show))
        .route("/api/v1/rollouts/{id}/{action}", post(rollouts::command))
        .route(
            "/api/v1/models/{model}/trigger",
            get(triggers::get_rule)
                .put(triggers::put_rule)
                .delete(triggers::delete_rule),
        )
        .route("/api/v1/models/{model}/trigger/fire", post(triggers::fire))
        .route("/api/v1/triggers", get(triggers::history))
        .route("/api/v1/triggers/{id}", get(triggers::show_run))
        .route("/api/v1/devices/{id}", get(devices::show))
        .route("/api/v1/artifacts/{sha256}", get(devices::artifact))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/events", get(telemetry::events))
        .route("/api/v1/models/{model}/drift", get(telemetry::drift))
        .route("/api/v1/models/{model}/health", get(telemetry::health))
        .route(
            "/api/v1/models/{model}/drift-thresholds",
            get(telemetry::get_thresholds).put(telemetry::put_thresholds),
        )
        .route(
            "/api/v1/models/{model}/versions/{version}/reference",
            get(telemetry::get_reference)
                .put(telemetry::put_reference)
                .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024)),
        )
        .route(
            "/api/v1/models/{model}/versions/{version}/reference/features/{feature}",
            get(telemetry::reference_sketch),
        )
        .route(
            "/api/v1/models/{model}/versions/{version}/captures",
            get(telemetry::captures),
        )
        .fallback(|| async {
            ApiError::not_found("no such endpoint; GET /openapi.json lists them")
        })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("task failed: {e}")))?
}

/// The newest signed root metadata: what agents pin at enrollment.
async fn root(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let envelope = blocking(move || Ok(registry.store().latest_root()?)).await?;
    let envelope = envelope.ok_or_else(|| {
        ApiError::internal(
            "the hub has no root metadata; was it initialised with flotilla-hub init?",
        )
    })?;
    Ok(Json(
        serde_json::from_str(&envelope).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

/// Root metadata by version, for agents walking from the root they trust to the newest.
/// Public: root metadata is signed and holds no secret.
async fn root_version(
    State(state): State<ApiState>,
    axum::extract::Path(version): axum::extract::Path<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let registry = state.registry.clone();
    let envelope = blocking(move || Ok(registry.store().root(version)?)).await?;
    let envelope = envelope
        .ok_or_else(|| ApiError::not_found(format!("no root metadata version {version}")))?;
    Ok(Json(
        serde_json::from_str(&envelope).map_err(|e| ApiError::internal(e.to_string()))?,
    ))
}

/// Rotates the signing key (needs the root key on the hub), re-signs every manifest and
/// desired state, and republishes the desired states.
async fn rotate_keys(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let (registry, fleet) = (state.registry.clone(), state.fleet.clone());
    let actor = caller.name.clone();
    let (root_version, publications) = blocking(move || {
        let version = registry
            .rotate_signing_key(None, &actor)
            .map_err(|e| match e {
                crate::registry::RotationError::DataDir(
                    crate::data_dir::DataDirError::RootKeyOffline,
                ) => ApiError::new(axum::http::StatusCode::CONFLICT, e.to_string()),
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
    Ok(Json(
        serde_json::json!({"root_version": root_version, "devices_updated": publications.len()}),
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollmentTokenRequest {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    ttl_seconds: i64,
}

async fn create_enrollment_token(
    State(state): State<ApiState>,
    caller: Caller,
    Json(request): Json<EnrollmentTokenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    if request.ttl_seconds <= 0 {
        return Err(ApiError::bad_request("ttl_seconds must be positive"));
    }
    let registry = state.registry.clone();
    blocking(move || {
        let token = new_token("flo_enroll").map_err(|e| ApiError::internal(e.to_string()))?;
        let now = registry.now();
        let expires = now + request.ttl_seconds;
        registry.store().insert_enrollment_token(
            &token_hash(&token),
            &request.labels,
            expires,
            now,
        )?;
        registry.store().audit(
            now,
            &caller.name,
            "enroll_token.create",
            &format!("labels {:?} expires {expires}", request.labels),
        )?;
        Ok(Json(
            serde_json::json!({"token": token, "expires": expires, "labels": request.labels}),
        ))
    })
    .await
}

/// Prometheus text; unauthenticated like most scrape targets, and free of secrets.
async fn metrics(State(state): State<ApiState>) -> impl axum::response::IntoResponse {
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

async fn audit(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let entries = blocking(move || Ok(registry.store().audit_log(200)?)).await?;
    Ok(Json(
        serde_json::to_value(entries).expect("audit entries serialize"),
    ))
}
