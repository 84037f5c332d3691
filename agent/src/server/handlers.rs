//! HTTP routes of the Open Inference Protocol (plus Triton's repository extension and
//! Prometheus metrics), each a thin adapter over the repository, `infer` and `metrics`.

use std::collections::HashMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_common::clock::Stopwatch;
use flotilla_proto::inference::{INFERENCE_HEADER_CONTENT_LENGTH, ModelMetadata, ServerMetadata};

use std::sync::Arc;

use super::AppState;
use super::error::ApiError;
use super::infer::{decode_request, encode_response, split_body};
use crate::metrics::ErrorKind;
use crate::telemetry::{FeatureRows, Recorder, extract_features};
use flotilla_runtime::{LoadedModel, NamedTensor};

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(serde_json::json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::not_found(
                "no such endpoint; the agent serves the Open Inference Protocol under /v2",
            )
        })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError {
                    kind: ErrorKind::BadRequest,
                    message: format!("{method} is not allowed on {}", uri.path()),
                    status: None,
                }
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
            },
        )
        .with_state(state)
}

/// The path's model and version; a path that cannot be decoded is a JSON 400 like every
/// other client mistake.
struct ModelPath(HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ModelPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<ModelPath, ApiError> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(params)| ModelPath(params))
            .map_err(|rejection| ApiError::bad_request(format!("bad path: {rejection}")))
    }
}

async fn server_ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let ready = state.repository.all_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({"ready": ready})))
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "flotilla-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "model_repository".into()],
    })
}

async fn model_metadata(
    State(state): State<AppState>,
    ModelPath(params): ModelPath,
) -> Result<Json<ModelMetadata>, ApiError> {
    let name = &params["model"];
    let model = state
        .repository
        .get(name, params.get("version").map(String::as_str))?;
    Ok(Json(ModelMetadata {
        name: name.clone(),
        versions: state
            .repository
            .versions(name)
            .iter()
            .map(u64::to_string)
            .collect(),
        platform: "onnx_onnxv1".into(),
        inputs: model
            .signature
            .inputs
            .iter()
            .map(|s| s.metadata())
            .collect(),
        outputs: model
            .signature
            .outputs
            .iter()
            .map(|s| s.metadata())
            .collect(),
    }))
}

async fn model_ready(
    State(state): State<AppState>,
    ModelPath(params): ModelPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .repository
        .get(&params["model"], params.get("version").map(String::as_str))?;
    Ok(Json(
        serde_json::json!({"name": params["model"], "ready": true}),
    ))
}

async fn infer(
    State(state): State<AppState>,
    ModelPath(params): ModelPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Stopwatch::start();
    let _in_flight = state.metrics.start_request();
    let name = &params["model"];
    let mut version_label = String::new();
    let mut served: Option<Arc<LoadedModel>> = None;
    let mut observed: Option<(Option<FeatureRows>, Vec<NamedTensor>)> = None;
    let result = async {
        let model = state
            .repository
            .get(name, params.get("version").map(String::as_str))?;
        version_label = model.version.to_string();
        served = Some(model.clone());
        let body = axum::body::to_bytes(body, state.max_body_bytes)
            .await
            .map_err(|e| body_error(e, state.max_body_bytes))?;
        let header_length = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::bad_request("Inference-Header-Content-Length is not text")
            })?),
            None => None,
        };
        let (json, binary) = split_body(&body, header_length)?;
        let request = decode_request(json, binary, &model.signature)?;
        let output_names = request.outputs.iter().map(|c| c.name.clone()).collect();
        // Copied before the run takes the inputs; only when telemetry is on.
        let features = match (&state.telemetry, &model.feature_map) {
            (Some(_), Some(map)) => extract_features(map, &request.inputs),
            _ => None,
        };
        let outputs = model.infer(request.inputs, output_names).await?;
        let encoded = encode_response(
            name,
            model.version,
            request.id.as_deref(),
            &outputs,
            &request.outputs,
        );
        if state.telemetry.is_some() {
            observed = Some((features, outputs));
        }
        encoded
    }
    .await;
    if let (Some(recorder), Some(model)) = (&state.telemetry, &served) {
        record_telemetry(recorder, model, &result, observed, started.elapsed());
    }
    // Unknown models are counted under an empty name: names come from clients, and a typo
    // must not mint a new metric series. An unknown version of a known model has no version.
    let model_label = if state.repository.is_known(name) {
        name.as_str()
    } else {
        ""
    };
    match result {
        Ok(encoded) => {
            state
                .metrics
                .record(model_label, &version_label, started.elapsed(), None);
            let mut response = Response::new(Body::from(encoded.body));
            let headers = response.headers_mut();
            match encoded.json_length {
                Some(length) => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(length));
                }
                None => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            response
        }
        Err(error) => {
            state.metrics.record(
                model_label,
                &version_label,
                started.elapsed(),
                Some(error.kind),
            );
            if error.kind == ErrorKind::InferenceFailed {
                tracing::warn!(model = %name, error = %error.message, "inference failed");
            }
            error.into_response()
        }
    }
}

/// Adds the request to its model version's window (see `telemetry::record_request`).
fn record_telemetry(
    recorder: &Recorder,
    model: &LoadedModel,
    result: &Result<super::infer::EncodedResponse, ApiError>,
    observed: Option<(Option<FeatureRows>, Vec<NamedTensor>)>,
    elapsed: std::time::Duration,
) {
    let outcome = match (result, observed) {
        (Ok(_), Some(observed)) => Ok(observed),
        (Ok(_), None) => Ok((None, Vec::new())),
        (Err(error), _) => Err(error.kind.label()),
    };
    crate::telemetry::record_request(recorder, model, outcome, elapsed);
}

fn body_error(error: axum::Error, limit: usize) -> ApiError {
    let too_large = std::error::Error::source(&error)
        .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
        || error.to_string().contains("length limit");
    if too_large {
        ApiError {
            kind: ErrorKind::TooLarge,
            message: format!(
                "request body is larger than the limit of {limit} bytes (max_body_bytes)"
            ),
            status: None,
        }
    } else {
        ApiError::bad_request(format!("could not read the request body: {error}"))
    }
}

async fn repository_index(State(state): State<AppState>, _body: Bytes) -> impl IntoResponse {
    Json(state.repository.index())
}

/// Triton's `load`: re-reads the model's folder and swaps in new or changed versions.
async fn repository_load(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.repository.is_known(&name) {
        return Err(ApiError::not_found(format!(
            "unknown model {name:?}; this agent serves only the models in its configuration"
        )));
    }
    let report = state.repository.reload(Some(&name)).await;
    if !report.errors.is_empty() {
        return Err(ApiError::bad_request(report.errors.join("; ")));
    }
    Ok(Json(serde_json::json!({
        "loaded": report.loaded.iter().map(|(_, v)| v.to_string()).collect::<Vec<_>>(),
        "unloaded": report.unloaded.iter().map(|(_, v)| v.to_string()).collect::<Vec<_>>(),
        "versions": state.repository.versions(&name).iter().map(u64::to_string).collect::<Vec<_>>(),
    })))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&crate::metrics::render_waiting(&state.repository.waiting()));
    if let Some(status) = &state.telemetry_status {
        text.push_str(&status.render());
    }
    if let Some(cap) = &state.connections {
        text.push_str(&cap.exposition("flotilla_agent"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
