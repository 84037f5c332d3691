//! Retraining trigger endpoints: a model's rule, manual firing, and the run history.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::{ApiError, ApiState, Caller, blocking};
use crate::store::Scope;
use crate::triggers::rule::TriggerRule;
use crate::triggers::{TriggerError, Triggers};

impl From<TriggerError> for ApiError {
    fn from(error: TriggerError) -> ApiError {
        let status = match &error {
            TriggerError::Registry(_) => match error {
                TriggerError::Registry(e) => return ApiError::from(e),
                _ => unreachable!(),
            },
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

/// `GET /api/v1/models/{model}/trigger`: the rule, the webhook secret not shown.
pub(super) async fn get_rule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let triggers = triggers(&state)?;
    let rule = blocking(move || Ok(triggers.rule(&model)?)).await?;
    Ok(Json(
        serde_json::to_value(rule.redacted()).expect("rules serialize"),
    ))
}

/// `PUT /api/v1/models/{model}/trigger`: the rule as JSON (unknown fields refused).
pub(super) async fn put_rule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the trigger rule is not UTF-8 JSON"))?;
    let rule = TriggerRule::from_json(text).map_err(TriggerError::from)?;
    let triggers = triggers(&state)?;
    let shown = rule.redacted();
    blocking(move || Ok(triggers.set_rule(&model, &rule, &caller.name)?)).await?;
    Ok(Json(serde_json::to_value(shown).expect("rules serialize")))
}

pub(super) async fn delete_rule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Operator)?;
    let triggers = triggers(&state)?;
    blocking(move || Ok(triggers.remove_rule(&model, &caller.name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/models/{model}/trigger/fire`, body `{"note": "..."}` (optional).
pub(super) async fn fire(
    State(state): State<ApiState>,
    caller: Caller,
    Path(model): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Scope::Operator)?;
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct FireRequest {
        note: Option<String>,
    }
    let request: FireRequest = if body.is_empty() {
        FireRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the fire request: {e}")))?
    };
    let triggers = triggers(&state)?;
    let run =
        blocking(move || Ok(triggers.fire_manual(&model, request.note, &caller.name)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(run).expect("runs serialize")),
    ))
}

/// `GET /api/v1/triggers?model=M&limit=N`: runs, newest first.
pub(super) async fn history(
    State(state): State<ApiState>,
    caller: Caller,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit {text:?} is not 1 to 1000")))?,
        None => 100,
    };
    let model = params.get("model").cloned();
    let triggers = triggers(&state)?;
    let runs = blocking(move || Ok(triggers.runs(model.as_deref(), limit)?)).await?;
    Ok(Json(serde_json::json!({"runs": runs})))
}

pub(super) async fn show_run(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let triggers = triggers(&state)?;
    let run = blocking(move || Ok(triggers.run(&id)?)).await?;
    Ok(Json(serde_json::to_value(run).expect("runs serialize")))
}
