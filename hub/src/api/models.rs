//! `/api/v1/models/...`: push, list, show, manifests, aliases, retirement and the quality
//! gate.

use std::collections::BTreeMap;
use std::io::Write;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api::ErrorBody;
use flotilla_api::models::{
    AliasAnswer, AliasChange, AliasRequest, ModelDetail, ModelSummary, PushAnswer, PushRequest,
    QualityGateResult, RetireAnswer, VersionView,
};
use flotilla_api::quality::{QualityPolicy, evaluate};
use flotilla_proto::trust::Envelope;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::docs::{OperatorErrors, ReadErrors};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiError, ApiState, Caller, blocking};
use crate::registry::check_name;
use crate::store::{Scope, VersionRecord};

/// A stored version as the API shows it, with the aliases that point at it.
pub(super) fn version_view(record: &VersionRecord, aliases: &BTreeMap<String, u64>) -> VersionView {
    VersionView {
        model: record.model.clone(),
        version: record.version,
        artifact_sha256: record.artifact_sha256.clone(),
        artifact_size: record.artifact_size,
        inputs: record.inputs.clone(),
        outputs: record.outputs.clone(),
        metrics: record.metrics.clone(),
        tags: record.tags.clone(),
        lineage: record.lineage.clone(),
        created: record.created,
        retired: record.retired,
        aliases: aliases
            .iter()
            .filter(|(_, v)| **v == record.version)
            .map(|(a, _)| a.clone())
            .collect(),
        manifest_expires: record.manifest_expires,
    }
}

/// Every model with its version count and aliases.
#[utoipa::path(get, operation_id = "models_list", path = "/api/v1/models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = Vec<ModelSummary>), ReadErrors))]
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<ModelSummary>>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    let models = blocking(move || Ok(registry.store().models()?)).await?;
    Ok(Json(
        models
            .into_iter()
            .map(|m| ModelSummary {
                name: m.name,
                versions: m.versions,
                latest_version: m.latest_version,
                aliases: m.aliases,
                created: m.created,
            })
            .collect(),
    ))
}

/// A model: its versions, aliases and alias history.
#[utoipa::path(get, operation_id = "models_show", path = "/api/v1/models/{model}", tag = "models", security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, body = ModelDetail),
        (status = 404, description = "Unknown model", body = ErrorBody),
        ReadErrors))]
pub(super) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let versions = registry.store().versions(&model)?;
        if versions.is_empty() {
            return Err(ApiError::not_found(format!("unknown model {model:?}")));
        }
        let aliases = registry.store().aliases(&model)?;
        let history = registry.store().alias_history(&model)?;
        Ok(Json(ModelDetail {
            name: model,
            versions: versions.iter().map(|v| version_view(v, &aliases)).collect(),
            alias_history: history
                .into_iter()
                .map(|h| AliasChange {
                    alias: h.alias,
                    version: h.version,
                    at: h.at,
                    actor: h.actor,
                })
                .collect(),
            aliases,
        }))
    })
    .await
}

/// A version by number or alias.
#[utoipa::path(get, operation_id = "models_version", path = "/api/v1/models/{model}/versions/{version}", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Version number or alias")),
    responses(
        (status = 200, body = VersionView),
        (status = 404, description = "Unknown model, version or alias", body = ErrorBody),
        ReadErrors))]
pub(super) async fn version(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version)): ApiPath<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let record = registry.resolve(&model, &version)?;
        let aliases = registry.store().aliases(&model)?;
        Ok(Json(version_view(&record, &aliases)))
    })
    .await
}

/// The signed manifest envelope of a version.
#[utoipa::path(get, operation_id = "models_manifest", path = "/api/v1/models/{model}/versions/{version}/manifest", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = String, Path, description = "Version number or alias")),
    responses(
        (status = 200, description = "The manifest, signed by the hub's signing key", body = Envelope),
        (status = 404, description = "Unknown model, version or alias", body = ErrorBody),
        ReadErrors))]
pub(super) async fn manifest(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version)): ApiPath<(String, String)>,
) -> Result<Json<Envelope>, ApiError> {
    caller.require(Scope::Read)?;
    let registry = state.registry.clone();
    blocking(move || {
        let record = registry.resolve(&model, &version)?;
        Ok(Json(serde_json::from_str(&record.manifest).map_err(
            |e| ApiError::internal(format!("stored manifest: {e}")),
        )?))
    })
    .await
}

/// Query parameters of a push, for the document (the handler reads them as a map: metric,
/// tag and lineage names are the caller's).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PushParams {
    /// Comma-separated names of the feature input's columns (default: the previous
    /// version's names when the input matches, else f0, f1, ...).
    features: Option<String>,
    /// Comma-separated features counted by value instead of sketched as numbers.
    categorical: Option<String>,
    /// The input whose columns are the features (default: the first 2-D numeric input).
    feature_input: Option<String>,
    /// Comma-separated outputs that are predictions (default: every output).
    predictions: Option<String>,
    /// Also `metric.NAME=NUMBER`, `tag.NAME=VALUE` and `lineage.NAME=VALUE` (for example
    /// `lineage.dataset`, `lineage.commit`, `lineage.parent`), any number of each.
    #[param(rename = "metric.NAME")]
    metric: Option<f64>,
    #[param(rename = "tag.NAME")]
    tag: Option<String>,
    #[param(rename = "lineage.NAME")]
    lineage: Option<String>,
}

/// Push: the body is the ONNX file. It is spooled to disk and hashed as it arrives, never
/// held whole in memory; it must load in ONNX Runtime.
#[utoipa::path(post, operation_id = "models_push", path = "/api/v1/models/{model}/versions", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"), PushParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The ONNX file"),
    responses(
        (status = 201, description = "A new version", body = PushAnswer),
        (status = 200, description = "The same content is registered already: that version", body = PushAnswer),
        (status = 400, description = "A bad name or parameter, or an empty upload", body = ErrorBody),
        (status = 413, description = "Larger than the hub's upload limit", body = ErrorBody),
        (status = 422, description = "Not a model ONNX Runtime can load, or a feature map that does not fit it", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn push(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiQuery(query): ApiQuery<BTreeMap<String, String>>,
    body: Body,
) -> Result<(StatusCode, Json<PushAnswer>), ApiError> {
    caller.require(Scope::Operator)?;
    check_name(&model)?;
    let metadata =
        PushRequest::from_query(&query).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
    let (model, result) = blocking(move || {
        Ok(registry
            .push(&model, upload, &sha256, size, metadata, &actor)
            .map(|r| (model, r))?)
    })
    .await?;
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
        Json(PushAnswer {
            model,
            version: result.version,
            created: result.created,
            sha256: result.sha256,
            size: result.size,
            quality_gate,
        }),
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
) -> Result<Option<QualityGateResult>, ApiError> {
    let registry = state.registry.clone();
    let (model_name, actor_name) = (model.to_owned(), actor.to_owned());
    let judged = blocking(move || {
        let store = registry.store();
        let Some(text) = store.quality_policy(&model_name)? else {
            return Ok(None);
        };
        let policy: QualityPolicy = serde_json::from_str(&text)
            .map_err(|e| ApiError::internal(format!("stored quality gate: {e}")))?;
        let candidate = registry.resolve(&model_name, &version.to_string())?;
        let baseline = match store.aliases(&model_name)?.get(&policy.baseline_alias) {
            Some(v) if *v != version => store.version(&model_name, *v)?,
            _ => None,
        };
        let verdict = evaluate(
            &policy.rules,
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
    let mut answer = QualityGateResult {
        passed: verdict.passed,
        rejected: !verdict.passed,
        baseline_version: verdict.baseline_version,
        outcomes: verdict.outcomes,
        rollout: None,
    };
    if let (true, Some(template), Some(rollouts)) =
        (verdict.passed, &policy.auto_rollout, &state.rollouts)
    {
        let spec = template
            .for_version(model, version)
            .map_err(|e| ApiError::bad_request(format!("the gate's auto_rollout: {e}")))?;
        let view = rollouts.create(spec, "quality-gate").await?;
        answer.rollout = Some(view.id);
    }
    Ok(Some(answer))
}

/// Sets the model's quality gate: new versions that fail it are retired, passing ones may
/// start a rollout.
#[utoipa::path(put, operation_id = "models_put_quality_gate", path = "/api/v1/models/{model}/quality-gate", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = QualityPolicy,
    responses(
        (status = 200, description = "The gate as stored", body = QualityPolicy),
        (status = 400, description = "A rule or the auto_rollout spec is invalid; the message says which", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn put_quality_gate(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiJson(policy): ApiJson<QualityPolicy>,
) -> Result<Json<QualityPolicy>, ApiError> {
    caller.require(Scope::Operator)?;
    check_name(&model)?;
    policy.check().map_err(ApiError::bad_request)?;
    if let Some(template) = &policy.auto_rollout {
        template
            .for_version(&model, 1)
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
    Ok(Json(policy))
}

/// The model's promotion quality gate.
#[utoipa::path(get, operation_id = "models_get_quality_gate", path = "/api/v1/models/{model}/quality-gate", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, body = QualityPolicy),
        (status = 404, description = "The model has no quality gate", body = ErrorBody),
        ReadErrors))]
pub(super) async fn get_quality_gate(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<QualityPolicy>, ApiError> {
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

/// Points an alias at a version (a number or another alias's version).
#[utoipa::path(put, operation_id = "models_set_alias", path = "/api/v1/models/{model}/aliases/{alias}", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias name, e.g. production")),
    request_body = AliasRequest,
    responses(
        (status = 200, body = AliasAnswer),
        (status = 400, description = "A numeric or badly formed alias name", body = ErrorBody),
        (status = 404, description = "Unknown model, version or alias", body = ErrorBody),
        (status = 409, description = "The version is retired", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn set_alias(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, alias)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<AliasRequest>,
) -> Result<Json<AliasAnswer>, ApiError> {
    caller.require(Scope::Operator)?;
    let target = request.version.to_string();
    let registry = state.registry.clone();
    blocking(move || {
        let version = registry.set_alias(&model, &alias, &target, &caller.name)?;
        Ok(Json(AliasAnswer {
            model,
            alias,
            version,
        }))
    })
    .await
}

/// Removes an alias.
#[utoipa::path(delete, operation_id = "models_remove_alias", path = "/api/v1/models/{model}/aliases/{alias}", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("alias" = String, Path, description = "Alias name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "Unknown model or alias", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn remove_alias(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, alias)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operator)?;
    let registry = state.registry.clone();
    blocking(move || {
        registry.remove_alias(&model, &alias, &caller.name)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Retires a version: kept on record, never deployable again.
#[utoipa::path(post, operation_id = "models_retire", path = "/api/v1/models/{model}/versions/{version}/retire", tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name"),
           ("version" = u64, Path, description = "Version number")),
    responses(
        (status = 200, body = RetireAnswer),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn retire(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((model, version)): ApiPath<(String, String)>,
) -> Result<Json<RetireAnswer>, ApiError> {
    caller.require(Scope::Operator)?;
    let number: u64 = version.parse().map_err(|_| {
        ApiError::bad_request(format!("retire takes a version number, not {version:?}"))
    })?;
    let registry = state.registry.clone();
    blocking(move || {
        registry.retire(&model, number, &caller.name)?;
        Ok(Json(RetireAnswer {
            model,
            version: number,
            retired: true,
        }))
    })
    .await
}
