//! `/api/v1/models/{model}/drift|health|drift-thresholds`, reference profiles, captured
//! samples and the event log: thin adapters over `crate::telemetry`.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_api::ErrorBody;
use flotilla_api::telemetry::{
    Against as AgainstParam, CaptureFormat, CaptureQuery, DriftReport, Event, EventQuery, Events,
    FeatureSummary, HealthReport, ModelThresholds, ReferenceStored, ReferenceSummary, SliceParams,
};
use flotilla_common::sketch::Profile;

use super::docs::{OperatorErrors, ReadErrors};
use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, ApiState, Caller, blocking};
use crate::store::Scope;
use crate::telemetry::{Against, SliceQuery, Telemetry, TelemetryError};

impl From<TelemetryError> for ApiError {
    fn from(error: TelemetryError) -> ApiError {
        match error {
            TelemetryError::Store(e) => e.into(),
            TelemetryError::NotFound(m) => ApiError::not_found(m),
            TelemetryError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
        }
    }
}

fn telemetry(state: &ApiState) -> Result<std::sync::Arc<Telemetry>, ApiError> {
    state
        .telemetry
        .clone()
        .ok_or_else(|| ApiError::not_found("this hub keeps no telemetry"))
}

/// The slice the parameters choose (the version resolved, durations back from now).
fn slice_query(
    state: &ApiState,
    model: &str,
    params: &SliceParams,
) -> Result<SliceQuery, ApiError> {
    let now_ms = state.registry.now_ms();
    let mut query = SliceQuery {
        model: model.to_owned(),
        selector: params.selector.clone().unwrap_or_default(),
        since_ms: params.since_ms,
        until_ms: params.until_ms,
        ..SliceQuery::default()
    };
    if let Some(version) = &params.version {
        query.version = Some(state.registry.resolve(model, version)?.version);
    }
    if let Some(devices) = &params.devices {
        query.devices = Some(
            devices
                .split(',')
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect::<BTreeSet<_>>(),
        );
    }
    if let Some(since) = params.since {
        query.since_ms = Some(now_ms.saturating_sub(since.as_millis()));
    }
    if let Some(until) = params.until {
        query.until_ms = Some(now_ms.saturating_sub(until.as_millis()));
    }
    Ok(query)
}

/// Drift of a fleet slice against the version's reference profile or another version's
/// slice: per feature KS, Wasserstein/σ, PSI, JS, Hellinger and a verdict.
#[utoipa::path(get, operation_id = "telemetry_drift", path = "/api/v1/models/{model}/drift", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), SliceParams),
    responses(
        (status = 200, body = DriftReport),
        (status = 400, description = "A bad parameter (duration, selector, against, unknown name)", body = ErrorBody),
        (status = 404, description = "Unknown model or version, or no reference profile", body = ErrorBody),
        ReadErrors))]
pub(super) async fn drift(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiQuery(params): ApiQuery<SliceParams>,
) -> Result<Json<DriftReport>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || {
        let mut query = slice_query(&state, &model, &params)?;
        if query.version.is_none() {
            // The newest version is the usual question.
            let newest = state
                .registry
                .store()
                .versions(&model)?
                .iter()
                .map(|v| v.version)
                .max();
            query.version = Some(
                newest.ok_or_else(|| ApiError::not_found(format!("unknown model {model:?}")))?,
            );
        }
        let against = match &params.against {
            None | Some(AgainstParam::Reference) => Against::Reference,
            Some(AgainstParam::Version(v)) => {
                Against::Version(state.registry.resolve(&model, v)?.version)
            }
        };
        Ok(Json(telemetry.drift_report(&query, &against)?))
    })
    .await
}

/// Requests, errors by kind, error rate, latency p50/p90/p99 and spool losses per version.
#[utoipa::path(get, operation_id = "telemetry_health", path = "/api/v1/models/{model}/health", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), SliceParams),
    responses(
        (status = 200, body = HealthReport),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        ReadErrors))]
pub(super) async fn health(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiQuery(params): ApiQuery<SliceParams>,
) -> Result<Json<HealthReport>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || {
        let query = slice_query(&state, &model, &params)?;
        let versions = telemetry.health(&query)?;
        Ok(Json(HealthReport { model, versions }))
    })
    .await
}

/// Stores a version's reference profile set (binary, as `flotilla model push --reference`
/// builds it from the training data).
#[utoipa::path(put, operation_id = "telemetry_put_reference", path = "/api/v1/models/{model}/versions/{version}/reference", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Version number or alias")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "Encoded reference profiles (flotilla_common::telemetry::encode_reference)"),
    responses(
        (status = 201, description = "Stored", body = ReferenceStored),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Larger than 256 MiB", body = ErrorBody),
        (status = 422, description = "Not a profile set, or it lacks the version's features", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn put_reference(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version)): ApiPath<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<ReferenceStored>), ApiError> {
    caller.require(Scope::Operator)?;
    let telemetry = telemetry(&state)?;
    let actor = caller.name.clone();
    blocking(move || {
        let record = state.registry.resolve(&model, &version)?;
        let now = state.registry.now();
        let names = telemetry.set_reference(&model, record.version, &body, now)?;
        state.registry.store().audit(
            now,
            &actor,
            "reference.set",
            &format!(
                "{model} version {} ({} features)",
                record.version,
                names.len()
            ),
        )?;
        Ok((
            StatusCode::CREATED,
            Json(ReferenceStored {
                model,
                version: record.version,
                features: names,
            }),
        ))
    })
    .await
}

fn feature_summary(name: &str, profile: &Profile) -> FeatureSummary {
    match profile {
        Profile::Numeric(p) => {
            let has_values = p.valid() > 0;
            FeatureSummary::Numeric {
                name: name.to_owned(),
                count: p.count,
                nulls: p.nulls,
                non_finite: p.non_finite,
                min: has_values.then_some(p.min),
                max: has_values.then_some(p.max),
                mean: p.mean(),
                std_dev: p.std_dev(),
                quantiles: [0.01, 0.25, 0.5, 0.75, 0.99]
                    .iter()
                    .map(|&r| p.quantile(r))
                    .collect(),
                k: p.k(),
            }
        }
        Profile::Categorical(p) => FeatureSummary::Categorical {
            name: name.to_owned(),
            count: p.count,
            nulls: p.nulls,
            distinct: p.distinct(),
            exact: p.is_exact(),
            top: p.frequencies().into_iter().take(10).collect(),
        },
    }
}

/// The version (number or alias) and its reference profiles, or a 404 naming what is missing.
fn reference_of(
    state: &ApiState,
    telemetry: &Telemetry,
    model: &str,
    version: &str,
) -> Result<(u64, u64, Vec<flotilla_common::telemetry::NamedProfile>), ApiError> {
    let record = state.registry.resolve(model, version)?;
    let (rows, profiles) = telemetry.reference(model, record.version)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "model {model:?} version {} has no reference profile",
            record.version
        ))
    })?;
    Ok((record.version, rows, profiles))
}

/// A summary of the version's reference profile.
#[utoipa::path(get, operation_id = "telemetry_get_reference", path = "/api/v1/models/{model}/versions/{version}/reference", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Version number or alias")),
    responses(
        (status = 200, body = ReferenceSummary),
        (status = 404, description = "Unknown model or version, or no reference profile", body = ErrorBody),
        ReadErrors))]
pub(super) async fn get_reference(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version)): ApiPath<(String, String)>,
) -> Result<Json<ReferenceSummary>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || {
        let (version, rows, profiles) = reference_of(&state, &telemetry, &model, &version)?;
        Ok(Json(ReferenceSummary {
            model,
            version,
            rows,
            features: profiles
                .iter()
                .map(|p| feature_summary(&p.name, &p.profile))
                .collect(),
        }))
    })
    .await
}

/// One reference feature's sketch in the DataSketches binary format (KLL floats, or
/// frequent items of strings), readable by Python's `datasketches`.
#[utoipa::path(get, operation_id = "telemetry_reference_sketch", path = "/api/v1/models/{model}/versions/{version}/reference/features/{feature}",
    tag = "telemetry", security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Version number or alias"),
           ("feature" = String, Path, description = "Feature name")),
    responses(
        (status = 200, description = "The sketch; header x-datasketches-type is kll_floats_sketch or frequent_strings_sketch",
            content_type = "application/octet-stream", body = Vec<u8>,
            headers(("x-datasketches-type" = String, description = "The DataSketches sketch type"))),
        (status = 404, description = "Unknown model, version or feature, or no reference profile", body = ErrorBody),
        ReadErrors))]
pub(super) async fn reference_sketch(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version, feature)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || {
        let (_, _, profiles) = reference_of(&state, &telemetry, &model, &version)?;
        let profile = profiles.iter().find(|p| p.name == feature).ok_or_else(|| {
            ApiError::not_found(format!("the reference has no feature {feature:?}"))
        })?;
        let (kind, bytes) = match &profile.profile {
            Profile::Numeric(p) => ("kll_floats_sketch", p.kll_bytes()),
            Profile::Categorical(p) => ("frequent_strings_sketch", p.frequent_items_bytes()),
        };
        Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::HeaderName::from_static("x-datasketches-type"),
                    kind.to_owned(),
                ),
            ],
            bytes,
        )
            .into_response())
    })
    .await
}

/// The model's drift thresholds.
#[utoipa::path(get, operation_id = "telemetry_get_thresholds", path = "/api/v1/models/{model}/drift-thresholds", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelThresholds), ReadErrors))]
pub(super) async fn get_thresholds(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<ModelThresholds>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || Ok(Json(telemetry.thresholds(&model)?))).await
}

/// Sets the model's drift thresholds (missing fields keep the defaults).
#[utoipa::path(put, operation_id = "telemetry_put_thresholds", path = "/api/v1/models/{model}/drift-thresholds", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = ModelThresholds,
    responses(
        (status = 200, description = "The thresholds as stored", body = ModelThresholds),
        (status = 400, description = "Not thresholds (an unknown field, say)", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn put_thresholds(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    body: Bytes,
) -> Result<Json<ModelThresholds>, ApiError> {
    caller.require(Scope::Operator)?;
    let thresholds: ModelThresholds = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("thresholds: {e}")))?;
    let telemetry = telemetry(&state)?;
    let actor = caller.name.clone();
    blocking(move || {
        if state.registry.store().versions(&model)?.is_empty() {
            return Err(ApiError::not_found(format!("unknown model {model:?}")));
        }
        telemetry.set_thresholds(&model, &thresholds)?;
        state.registry.store().audit(
            state.registry.now(),
            &actor,
            "drift_thresholds.set",
            &format!(
                "{model}: {}",
                serde_json::to_string(&thresholds).unwrap_or_default()
            ),
        )?;
        Ok(Json(thresholds))
    })
    .await
}

/// The event log: drift_alert, drift_cleared, rollout.*, quality_gate.*, trigger.*.
#[utoipa::path(get, operation_id = "telemetry_events", path = "/api/v1/events", tag = "telemetry", security(("bearer" = [])),
    params(EventQuery),
    responses(
        (status = 200, body = Events),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        ReadErrors))]
pub(super) async fn events(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<EventQuery>,
) -> Result<Json<Events>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    let limit = query.limit.unwrap_or(1000).min(10_000);
    blocking(move || {
        let events =
            telemetry
                .store
                .events(query.model.as_deref(), query.after.unwrap_or(0), limit)?;
        Ok(Json(Events {
            events: events
                .into_iter()
                .map(|e| Event {
                    id: e.id,
                    at: e.at,
                    kind: e.kind,
                    model: e.model,
                    version: e.version,
                    detail: e.detail,
                })
                .collect(),
        }))
    })
    .await
}

fn csv_field(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Captured samples of a version: NDJSON (one request per line) or CSV (one row per
/// example: device, time, features, then outputs as JSON).
#[utoipa::path(get, operation_id = "telemetry_captures", path = "/api/v1/models/{model}/versions/{version}/captures", tag = "telemetry",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Version number or alias"), CaptureQuery),
    responses(
        (status = 200, description = "NDJSON (application/x-ndjson) or CSV (text/csv)", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "A format other than ndjson or csv", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        ReadErrors))]
pub(super) async fn captures(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<CaptureQuery>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    let csv = query.format.unwrap_or_default() == CaptureFormat::Csv;
    blocking(move || {
        let record = state.registry.resolve(&model, &version)?;
        let mut out = String::new();
        let mut header: Option<Vec<String>> = None;
        telemetry.store.captures(&model, record.version, &mut |c| {
            if !csv {
                out.push_str(&serde_json::to_string(&c).expect("captures serialize"));
                out.push('\n');
                return;
            }
            let names: Vec<String> = c.inputs["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            if header.is_none() {
                let escaped: Vec<String> = names
                    .iter()
                    .map(|n| csv_field(&serde_json::Value::String(n.clone())))
                    .collect();
                out.push_str(&format!("device_id,at_ms,{},outputs\n", escaped.join(",")));
                header = Some(names);
            }
            for row in c.inputs["rows"].as_array().into_iter().flatten() {
                let values: Vec<String> = row
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(csv_field)
                    .collect();
                out.push_str(&format!(
                    "{},{},{},{}\n",
                    c.device_id,
                    c.at_ms,
                    values.join(","),
                    csv_field(&serde_json::Value::String(c.outputs.to_string()))
                ));
            }
        })?;
        let content_type = if csv {
            "text/csv"
        } else {
            "application/x-ndjson"
        };
        Ok(([(header::CONTENT_TYPE, content_type)], out).into_response())
    })
    .await
}
