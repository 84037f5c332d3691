//! `/api/v1/models/...`: push, list, show, aliases, retire.

use std::collections::BTreeMap;
use std::io::Write;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState, Caller, blocking};
use crate::registry::{PushMetadata, check_name};
use crate::store::{Scope, VersionRecord};

fn version_json(record: &VersionRecord, aliases: &BTreeMap<String, u64>) -> serde_json::Value {
    let names: Vec<&String> = aliases
        .iter()
        .filter(|(_, v)| **v == record.version)
        .map(|(a, _)| a)
        .collect();
    serde_json::json!({
        "model": record.model,
        "version": record.version,
        "artifact_sha256": record.artifact_sha256,
        "artifact_size": record.artifact_size,
        "inputs": record.inputs,
        "outputs": record.outputs,
        "metrics": record.metrics,
        "tags": record.tags,
        "lineage": record.lineage,
        "created": record.created,
        "retired": record.retired,
        "aliases": names,
        "manifest_expires": record.manifest_expires,
    })
}

pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let models = blocking(move || Ok(registry.store().models()?)).await?;
    Ok(Json(
        serde_json::to_value(models).expect("summaries serialize"),
    ))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let versions = registry.store().versions(&model)?;
        if versions.is_empty() {
            return Err(ApiError::not_found(format!("unknown model {model:?}")));
        }
        let aliases = registry.store().aliases(&model)?;
        let history = registry.store().alias_history(&model)?;
        Ok(Json(serde_json::json!({
            "name": model,
            "aliases": aliases,
            "alias_history": history,
            "versions": versions.iter().map(|v| version_json(v, &aliases)).collect::<Vec<_>>(),
        })))
    })
    .await
}

pub(super) async fn version(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let record = registry.resolve(&model, &version)?;
        let aliases = registry.store().aliases(&model)?;
        Ok(Json(version_json(&record, &aliases)))
    })
    .await
}

/// The signed manifest envelope of a version.
pub(super) async fn manifest(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let record = registry.resolve(&model, &version)?;
        Ok(Json(
            serde_json::from_str(&record.manifest)
                .map_err(|e| ApiError::internal(e.to_string()))?,
        ))
    })
    .await
}

/// Push: the body is the ONNX file; query parameters `metric.NAME=NUMBER`, `tag.NAME=VALUE`
/// and `lineage.NAME=VALUE` (e.g. `lineage.dataset`, `lineage.commit`, `lineage.parent`).
/// The body is spooled to disk and hashed as it arrives, never held whole in memory.
pub(super) async fn push(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Scope::Operator)?;
    check_name(&model)?;
    let metadata = push_metadata(&query)?;
    std::fs::create_dir_all(&state.upload_dir).map_err(|e| {
        ApiError::internal(format!("cannot create {}: {e}", state.upload_dir.display()))
    })?;
    let mut upload = tempfile::NamedTempFile::new_in(&state.upload_dir)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > state.max_upload_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "model file is larger than the hub's limit of {} bytes",
                    state.max_upload_bytes
                ),
            ));
        }
        hasher.update(&data);
        upload
            .write_all(&data)
            .map_err(|e| ApiError::internal(format!("cannot spool the upload: {e}")))?;
    }
    if size == 0 {
        return Err(ApiError::bad_request(
            "the upload is empty; send the ONNX file as the request body",
        ));
    }
    let sha256 = hex::encode(hasher.finalize());
    let registry = state.registry.clone();
    let actor = caller.name.clone();
    let result = blocking(move || {
        Ok(registry
            .push(&model, upload, &sha256, size, metadata, &actor)
            .map(|r| (model, r))?)
    })
    .await?;
    let (model, result) = result;
    crate::metrics::HubMetrics::add(&state.metrics.pushes, 1);
    let status = if result.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let quality_gate = if result.created {
        apply_quality_gate(&state, &model, result.version, &caller.name).await?
    } else {
        None
    };
    Ok((
        status,
        Json(
            serde_json::json!({"model": model, "version": result.version, "created": result.created, "sha256": result.sha256, "size": result.size, "quality_gate": quality_gate}),
        ),
    ))
}

/// Runs the model's quality gate on a new version: a failing candidate is retired (it can
/// never be deployed) and the comparison recorded; a passing one may start its canary
/// rollout. `None` when the model has no gate.
async fn apply_quality_gate(
    state: &ApiState,
    model: &str,
    version: u64,
    actor: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    use crate::quality::{QualityPolicy, evaluate, parse_policy};
    let registry = state.registry.clone();
    let (model_name, actor_name) = (model.to_owned(), actor.to_owned());
    let judged = blocking(move || {
        let store = registry.store();
        let Some(text) = store.quality_policy(&model_name)? else {
            return Ok(None);
        };
        let policy: QualityPolicy = serde_json::from_str(&text)
            .map_err(|e| ApiError::internal(format!("stored quality gate: {e}")))?;
        let rules = parse_policy(&policy).map_err(ApiError::internal)?;
        let candidate = registry.resolve(&model_name, &version.to_string())?;
        let baseline = match store.aliases(&model_name)?.get(&policy.baseline_alias) {
            Some(v) if *v != version => store.version(&model_name, *v)?,
            _ => None,
        };
        let verdict = evaluate(
            &rules,
            &candidate.metrics,
            baseline.as_ref().map(|b| (b.version, &b.metrics)),
        );
        let kind = if verdict.passed {
            "quality_gate.passed"
        } else {
            registry.retire(&model_name, version, "quality-gate")?;
            "quality_gate.rejected"
        };
        let detail = serde_json::to_value(&verdict).expect("verdicts serialize");
        store.audit(
            registry.now(),
            &actor_name,
            kind,
            &format!("{model_name} version {version}: {detail}"),
        )?;
        Ok(Some((policy, verdict, kind, detail, registry.now())))
    })
    .await?;
    let Some((policy, verdict, kind, detail, now)) = judged else {
        return Ok(None);
    };
    if let Some(telemetry) = &state.telemetry {
        telemetry
            .store
            .add_event(now, kind, model, Some(version), &detail)
            .map_err(ApiError::from)?;
    }
    let mut answer = serde_json::json!({
        "passed": verdict.passed,
        "rejected": !verdict.passed,
        "baseline_version": verdict.baseline_version,
        "outcomes": verdict.outcomes,
    });
    if let (true, Some(template), Some(rollouts)) =
        (verdict.passed, &policy.auto_rollout, &state.rollouts)
    {
        let mut spec = template.clone();
        spec["model"] = model.into();
        spec["version"] = version.to_string().into();
        let spec = crate::rollout::spec::RolloutSpec::from_json(&spec.to_string())
            .map_err(|e| ApiError::bad_request(format!("the gate's auto_rollout: {e}")))?;
        let view = rollouts.create(spec, "quality-gate").await?;
        answer["rollout"] = view.id.into();
    }
    Ok(Some(answer))
}

/// `PUT /api/v1/models/{model}/quality-gate`: the policy as JSON, checked.
pub(super) async fn put_quality_gate(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
    Json(policy): Json<crate::quality::QualityPolicy>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    check_name(&model)?;
    crate::quality::parse_policy(&policy).map_err(ApiError::bad_request)?;
    if let Some(template) = &policy.auto_rollout {
        let mut spec = template.clone();
        spec["model"] = model.clone().into();
        spec["version"] = "1".into();
        crate::rollout::spec::RolloutSpec::from_json(&spec.to_string())
            .map_err(|e| ApiError::bad_request(format!("auto_rollout: {e}")))?;
    }
    let registry = state.registry.clone();
    let actor = caller.name.clone();
    let text = serde_json::to_string(&policy).expect("policies serialize");
    blocking(move || {
        let now = registry.now();
        registry.store().set_quality_policy(&model, &text, now)?;
        registry
            .store()
            .audit(now, &actor, "quality_gate.set", &format!("{model}: {text}"))?;
        Ok(())
    })
    .await?;
    Ok(Json(
        serde_json::to_value(policy).expect("policies serialize"),
    ))
}

pub(super) async fn get_quality_gate(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let text = blocking(move || {
        registry.store().quality_policy(&model)?.ok_or_else(|| {
            ApiError::not_found(format!(
                "model {model:?} has no quality gate; PUT one to /api/v1/models/{model}/quality-gate"
            ))
        })
    })
    .await?;
    Ok(Json(serde_json::from_str(&text).map_err(|e| {
        ApiError::internal(format!("stored quality gate: {e}"))
    })?))
}

fn push_metadata(query: &BTreeMap<String, String>) -> Result<PushMetadata, ApiError> {
    let mut metadata = PushMetadata::default();
    for (key, value) in query {
        if let Some(name) = key.strip_prefix("metric.") {
            let number: f64 = value.parse().map_err(|_| {
                ApiError::bad_request(format!("metric {name:?} is {value:?}, not a number"))
            })?;
            metadata.metrics.insert(name.to_owned(), number);
        } else if let Some(name) = key.strip_prefix("tag.") {
            metadata.tags.insert(name.to_owned(), value.clone());
        } else if let Some(name) = key.strip_prefix("lineage.") {
            metadata.lineage.insert(name.to_owned(), value.clone());
        } else if key == "features" {
            metadata.feature_names = Some(value.split(',').map(|n| n.trim().to_owned()).collect());
        } else if key == "feature_input" {
            metadata.feature_input = Some(value.clone());
        } else if key == "predictions" {
            metadata.prediction_outputs = Some(
                value
                    .split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
            );
        } else if key == "categorical" {
            metadata.categorical = value
                .split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
        } else {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {key:?}; use metric.NAME, tag.NAME, lineage.NAME, features, categorical, feature_input or predictions"
            )));
        }
    }
    Ok(metadata)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AliasRequest {
    /// A version number or another alias.
    version: serde_json::Value,
}

pub(super) async fn set_alias(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, alias)): Path<(String, String)>,
    Json(request): Json<AliasRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let target = match &request.version {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => {
            return Err(ApiError::bad_request(format!(
                "version must be a number or an alias name, not {other}"
            )));
        }
    };
    let registry = state.registry.clone();
    blocking(move || {
        let version = registry.set_alias(&model, &alias, &target, &caller.name)?;
        Ok(Json(
            serde_json::json!({"model": model, "alias": alias, "version": version}),
        ))
    })
    .await
}

pub(super) async fn remove_alias(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, alias)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operator)?;
    let registry = state.registry.clone();
    blocking(move || {
        registry.remove_alias(&model, &alias, &caller.name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

pub(super) async fn retire(
    State(state): State<ApiState>,
    caller: Caller,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let number: u64 = version.parse().map_err(|_| {
        ApiError::bad_request(format!("retire takes a version number, not {version:?}"))
    })?;
    let registry = state.registry.clone();
    blocking(move || {
        registry.retire(&model, number, &caller.name)?;
        Ok(Json(
            serde_json::json!({"model": model, "version": number, "retired": true}),
        ))
    })
    .await
}
