//! `/api/v1/models/{model}/drift|health|drift-thresholds`, reference profiles, captured
//! samples and the event log: thin adapters over `crate::telemetry`.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_common::sketch::Profile;

use super::{ApiError, ApiState, Caller, blocking};
use crate::store::Scope;
use crate::telemetry::{Against, ModelThresholds, SliceQuery, Telemetry, TelemetryError};

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

/// `90s`, `15m`, `1h`, `7d`: a duration back from now, in ms.
pub fn parse_ago(text: &str) -> Result<i64, ApiError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{text:?} is not a duration like 90s, 15m, 1h or 7d"
        ))
    })?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(ApiError::bad_request(format!(
                "{text:?}: unit must be ms, s, m, h or d"
            )));
        }
    };
    Ok(n.saturating_mul(unit_ms))
}

/// Query parameters shared by slice endpoints.
fn slice_query(
    state: &ApiState,
    model: &str,
    params: &BTreeMap<String, String>,
) -> Result<SliceQuery, ApiError> {
    let mut query = SliceQuery {
        model: model.to_owned(),
        ..SliceQuery::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "version" => query.version = Some(state.registry.resolve(model, value)?.version),
            "selector" => {
                query.selector = crate::data_dir::parse_labels(value).map_err(|_| {
                    ApiError::bad_request(format!(
                        "selector {value:?} is not key=value[,key=value]"
                    ))
                })?
            }
            "devices" => {
                query.devices = Some(
                    value
                        .split(',')
                        .map(|d| d.trim().to_owned())
                        .filter(|d| !d.is_empty())
                        .collect::<BTreeSet<_>>(),
                )
            }
            "since" => query.since_ms = Some(state.registry.now_ms() - parse_ago(value)?),
            "until" => query.until_ms = Some(state.registry.now_ms() - parse_ago(value)?),
            "since_ms" => {
                query.since_ms = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("since_ms is not a number"))?,
                )
            }
            "until_ms" => {
                query.until_ms = Some(
                    value
                        .parse()
                        .map_err(|_| ApiError::bad_request("until_ms is not a number"))?,
                )
            }
            "against" | "format" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}; use version, selector, devices, since, until, since_ms, until_ms, against"
                )));
            }
        }
    }
    Ok(query)
}

pub(super) async fn drift(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
        let against = match params.get("against").map(String::as_str) {
            None | Some("reference") => Against::Reference,
            Some(other) => match other.strip_prefix("version:") {
                Some(v) => Against::Version(state.registry.resolve(&model, v)?.version),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "against {other:?} is not reference or version:N"
                    )));
                }
            },
        };
        let report = telemetry.drift_report(&query, &against)?;
        Ok(Json(
            serde_json::to_value(report).expect("reports serialize"),
        ))
    })
    .await
}

pub(super) async fn health(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || {
        let query = slice_query(&state, &model, &params)?;
        let health = telemetry.health(&query)?;
        Ok(Json(
            serde_json::json!({"model": model, "versions": health}),
        ))
    })
    .await
}

pub(super) async fn put_reference(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
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
            Json(serde_json::json!({"model": model, "version": record.version, "features": names})),
        ))
    })
    .await
}

fn profile_summary(name: &str, profile: &Profile) -> serde_json::Value {
    match profile {
        Profile::Numeric(p) => {
            let quantiles: Vec<Option<f64>> = [0.01, 0.25, 0.5, 0.75, 0.99]
                .iter()
                .map(|&r| p.quantile(r))
                .collect();
            let has_values = p.valid() > 0;
            serde_json::json!({
                "name": name, "kind": "numeric", "count": p.count, "nulls": p.nulls, "non_finite": p.non_finite,
                "min": has_values.then_some(p.min), "max": has_values.then_some(p.max),
                "mean": p.mean(), "std_dev": p.std_dev(),
                "quantiles": quantiles,
                "k": p.k(),
            })
        }
        Profile::Categorical(p) => serde_json::json!({
            "name": name, "kind": "categorical", "count": p.count, "nulls": p.nulls,
            "distinct": p.distinct(), "exact": p.is_exact(),
            "top": p.frequencies().into_iter().take(10).collect::<Vec<_>>(),
        }),
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

pub(super) async fn get_reference(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || {
        let (version, rows, profiles) = reference_of(&state, &telemetry, &model, &version)?;
        Ok(Json(serde_json::json!({
            "model": model, "version": version, "rows": rows,
            "features": profiles.iter().map(|p| profile_summary(&p.name, &p.profile)).collect::<Vec<_>>(),
        })))
    })
    .await
}

/// One reference feature's sketch in the DataSketches binary format (KLL floats, or
/// frequent items of strings), readable by Python's `datasketches`.
pub(super) async fn reference_sketch(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version, feature)): Path<(String, String, String)>,
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

pub(super) async fn get_thresholds(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<ModelThresholds>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    blocking(move || Ok(Json(telemetry.thresholds(&model)?))).await
}

pub(super) async fn put_thresholds(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
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

pub(super) async fn events(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    let after: i64 = params
        .get("after")
        .map_or(Ok(0), |a| a.parse())
        .map_err(|_| ApiError::bad_request("after is not an event id"))?;
    let limit: u32 = params
        .get("limit")
        .map_or(Ok(1000), |a| a.parse())
        .map_err(|_| ApiError::bad_request("limit is not a number"))?;
    blocking(move || {
        let events = telemetry.store.events(
            params.get("model").map(String::as_str),
            after,
            limit.min(10_000),
        )?;
        Ok(Json(serde_json::json!({"events": events})))
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
pub(super) async fn captures(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read)?;
    let telemetry = telemetry(&state)?;
    let csv = match params.get("format").map(String::as_str) {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format {other:?} is not ndjson or csv"
            )));
        }
    };
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
