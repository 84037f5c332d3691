//! The hub's HTTP API (JSON, bearer tokens with read or operator scope), served with axum.
//! Its contract, every request and answer type, is `flotilla-api`; this module turns those
//! into handlers over the hub's services and documents each one where it is written
//! (`#[utoipa::path]`), so `/openapi.json` lists exactly what the router serves. The
//! `flotilla` CLI is a client of this API and nothing else.

mod auth;
mod devices;
mod docs;
mod error;
mod extract;
mod hub;
pub mod listener;
mod models;
mod rollouts;
mod telemetry;
mod triggers;

use std::sync::Arc;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::router::UtoipaMethodRouterExt;
use utoipa_axum::routes;

pub use auth::Caller;
pub use error::ApiError;

use crate::registry::Registry;

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
    /// The embedded broker, when the hub runs it: revoked devices are dropped from it.
    pub broker: Option<crate::transport::broker::EmbeddedBroker>,
    pub metrics: Arc<crate::metrics::HubMetrics>,
    /// Drift and health reports; absent in a registry-only hub.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// Rollouts in waves; absent in a registry-only hub.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
    /// Retraining triggers; absent in a registry-only hub.
    pub triggers: Option<Arc<crate::triggers::Triggers>>,
    /// Whether artifact downloads must come with a device certificate the hub issued (the
    /// API speaks TLS).
    pub device_certificates_required: bool,
}

/// Every route with its documentation.
fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(docs::frame())
        .routes(routes!(hub::healthz))
        .routes(routes!(hub::metrics))
        .routes(routes!(hub::root))
        .routes(routes!(hub::root_version))
        .routes(routes!(hub::rotate_keys))
        .routes(routes!(hub::audit))
        .routes(routes!(models::list))
        .routes(routes!(models::show))
        .routes(routes!(models::push))
        .routes(routes!(models::version))
        .routes(routes!(models::manifest))
        .routes(routes!(models::retire))
        .routes(routes!(models::get_quality_gate, models::put_quality_gate))
        .routes(routes!(models::set_alias, models::remove_alias))
        .routes(routes!(
            devices::create_enrollment_token,
            devices::list_enrollment_tokens
        ))
        .routes(routes!(devices::revoke_enrollment_token))
        .routes(routes!(devices::enroll))
        .routes(routes!(devices::deploy))
        .routes(routes!(devices::list))
        .routes(routes!(devices::show, devices::remove))
        .routes(routes!(devices::revoke))
        .routes(routes!(devices::renew_certificate))
        .routes(routes!(devices::artifact))
        .routes(routes!(rollouts::create, rollouts::list))
        .routes(routes!(rollouts::show))
        .routes(routes!(rollouts::command))
        .routes(routes!(
            triggers::get_rule,
            triggers::put_rule,
            triggers::delete_rule
        ))
        .routes(routes!(triggers::fire))
        .routes(routes!(triggers::history))
        .routes(routes!(triggers::show_run))
        .routes(routes!(telemetry::events))
        .routes(routes!(telemetry::drift))
        .routes(routes!(telemetry::health))
        .routes(routes!(
            telemetry::get_thresholds,
            telemetry::put_thresholds
        ))
        .routes(
            routes!(telemetry::get_reference, telemetry::put_reference)
                .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024)),
        )
        .routes(routes!(telemetry::reference_sketch))
        .routes(routes!(telemetry::captures))
        .routes(routes!(openapi_document))
}

/// The API's OpenAPI 3.1 document, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, document) = documented_routes().split_for_parts();
    document
}

pub fn router(state: ApiState) -> axum::Router {
    let (router, _) = documented_routes().split_for_parts();
    router
        .fallback(|| async {
            ApiError::not_found("no such endpoint; GET /openapi.json lists them")
        })
        .layer(axum::middleware::map_response(error::json_error_bodies))
        .with_state(state)
}

/// This document.
#[utoipa::path(get, operation_id = "openapi_document", path = "/openapi.json", tag = "hub",
    responses((status = 200, description = "The API's OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_document() -> axum::Json<serde_json::Value> {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(
        DOCUMENT
            .get_or_init(|| serde_json::to_value(openapi()).expect("the document serializes"))
            .clone(),
    )
}

/// Serves the API on `listener` until `shutdown` completes; handlers see each connection's
/// `Peer` (address, verified client certificate).
pub async fn serve(
    listener: flotilla_common::connection_cap::Capped<listener::ApiListener>,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<listener::Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("task failed: {e}")))?
}
