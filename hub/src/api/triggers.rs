//! Retraining trigger endpoints: a model's rule, manual firing, and the run history.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api::ErrorBody;
use flotilla_api::triggers::{FireRequest, TriggerRule, TriggerRun, TriggerRunQuery, TriggerRuns};

use super::docs::{OperatorErrors, ReadErrors};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiError, ApiState, Caller, blocking};
use crate::store::Scope;
use crate::triggers::{TriggerError, Triggers};

impl From<TriggerError> for ApiError {
    fn from(error: TriggerError) -> ApiError {
        let error = match error {
            TriggerError::Registry(e) => return ApiError::from(e),
            other => other,
        };
        let status = match &error {
            TriggerError::Registry(_) => StatusCode::INTERNAL_SERVER_ERROR,
            TriggerError::Rule(_) | TriggerError::CommandsNotAllowed => StatusCode::BAD_REQUEST,
            TriggerError::NoRule(_)
            | TriggerError::UnknownModel(_)
            | TriggerError::UnknownRun(_) => StatusCode::NOT_FOUND,
            TriggerError::Suppressed(_) => StatusCode::CONFLICT,
            TriggerError::Store(_) | TriggerError::Telemetry(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error.to_string())
    }
}

fn triggers(state: &ApiState) -> Result<Arc<Triggers>, ApiError> {
    state
        .triggers
        .clone()
        .ok_or_else(|| ApiError::internal("this hub runs no retraining triggers"))
}

/// The model's retraining trigger rule, the webhook secret not shown.
#[utoipa::path(get, operation_id = "triggers_get_rule", path = "/api/v1/models/{model}/trigger", tag = "triggers",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, body = TriggerRule),
        (status = 404, description = "The model has no rule", body = ErrorBody),
        ReadErrors))]
pub(super) async fn get_rule(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<TriggerRule>, ApiError> {
    caller.require(Scope::Read)?;
    let triggers = triggers(&state)?;
    let rule = blocking(move || Ok(triggers.rule(&model)?)).await?;
    Ok(Json(rule.redacted()))
}

/// Sets the model's rule (unknown fields refused); the answer hides the secret.
#[utoipa::path(put, operation_id = "triggers_put_rule", path = "/api/v1/models/{model}/trigger", tag = "triggers",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = TriggerRule,
    responses(
        (status = 200, description = "The rule as stored, secret hidden", body = TriggerRule),
        (status = 400, description = "An invalid rule (the reason says which field), or a command on a hub without `[triggers] allow_commands = true`", body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn put_rule(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    ApiJson(rule): ApiJson<TriggerRule>,
) -> Result<Json<TriggerRule>, ApiError> {
    caller.require(Scope::Operator)?;
    let triggers = triggers(&state)?;
    let shown = rule.redacted();
    blocking(move || Ok(triggers.set_rule(&model, &rule, &caller.name)?)).await?;
    Ok(Json(shown))
}

/// Removes the model's rule.
#[utoipa::path(delete, operation_id = "triggers_delete_rule", path = "/api/v1/models/{model}/trigger", tag = "triggers",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "The model has no rule", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn delete_rule(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operator)?;
    let triggers = triggers(&state)?;
    blocking(move || Ok(triggers.remove_rule(&model, &caller.name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fires the trigger now, whatever the telemetry says (cooldown does not apply).
#[utoipa::path(post, operation_id = "triggers_fire", path = "/api/v1/models/{model}/trigger/fire", tag = "triggers",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body(content = Option<FireRequest>, description = "Optional; an empty body is no note"),
    responses(
        (status = 201, description = "The run, being carried out", body = TriggerRun),
        (status = 400, description = "The body is not a fire request", body = ErrorBody),
        (status = 404, description = "The model has no rule", body = ErrorBody),
        (status = 409, description = "A run is still in flight", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn fire(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(model): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TriggerRun>), ApiError> {
    caller.require(Scope::Operator)?;
    let request: FireRequest = if body.is_empty() {
        FireRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the fire request: {e}")))?
    };
    let triggers = triggers(&state)?;
    let run =
        blocking(move || Ok(triggers.fire_manual(&model, request.note, &caller.name)?)).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// Trigger runs, newest first.
#[utoipa::path(get, operation_id = "triggers_history", path = "/api/v1/triggers", tag = "triggers", security(("bearer" = [])),
    params(TriggerRunQuery),
    responses(
        (status = 200, body = TriggerRuns),
        (status = 400, description = "A bad limit or unknown parameter", body = ErrorBody),
        ReadErrors))]
pub(super) async fn history(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<TriggerRunQuery>,
) -> Result<Json<TriggerRuns>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = match query.limit {
        Some(limit) if !(1..=1000).contains(&limit) => {
            return Err(ApiError::bad_request(format!(
                "limit {limit} is not 1 to 1000"
            )));
        }
        Some(limit) => limit,
        None => 100,
    };
    let triggers = triggers(&state)?;
    let runs = blocking(move || Ok(triggers.runs(query.model.as_deref(), limit)?)).await?;
    Ok(Json(TriggerRuns { runs }))
}

/// One trigger run: reason, status, attempts, outcome, payload.
#[utoipa::path(get, operation_id = "triggers_show_run", path = "/api/v1/triggers/{id}", tag = "triggers", security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = TriggerRun),
        (status = 404, description = "Unknown run", body = ErrorBody),
        ReadErrors))]
pub(super) async fn show_run(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TriggerRun>, ApiError> {
    caller.require(Scope::Read)?;
    let triggers = triggers(&state)?;
    let run = blocking(move || Ok(triggers.run(&id)?)).await?;
    Ok(Json(run))
}
