//! Rollout endpoints: create from a spec, list, status, and the operator's commands.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ApiError, ApiState, Caller};
use crate::rollout::controller::Input;
use crate::rollout::spec::RolloutSpec;
use crate::rollout::{RolloutError, Rollouts};
use crate::store::Scope;

impl From<RolloutError> for ApiError {
    fn from(error: RolloutError) -> ApiError {
        let error = match error {
            RolloutError::Registry(e) => return ApiError::from(e),
            RolloutError::Fleet(e) => return ApiError::from(e),
            other => other,
        };
        let status = match &error {
            RolloutError::Registry(_) | RolloutError::Fleet(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RolloutError::Spec(_) | RolloutError::NoTargets(_) => StatusCode::BAD_REQUEST,
            RolloutError::Concurrent { .. } | RolloutError::Refused(_) => StatusCode::CONFLICT,
            RolloutError::Unknown(_) => StatusCode::NOT_FOUND,
            RolloutError::Store(_) | RolloutError::Telemetry(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error.to_string())
    }
}

fn rollouts(state: &ApiState) -> Result<std::sync::Arc<Rollouts>, ApiError> {
    state
        .rollouts
        .clone()
        .ok_or_else(|| ApiError::internal("this hub runs no rollouts"))
}

/// `POST /api/v1/rollouts`: the spec as JSON (unknown fields refused).
pub(super) async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Scope::Operator)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the rollout spec is not UTF-8 JSON"))?;
    let spec = RolloutSpec::from_json(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let view = rollouts(&state)?.create(spec, &caller.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(view).expect("views serialize")),
    ))
}

pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let rollouts = rollouts(&state)?;
    let views = tokio::task::spawn_blocking(move || rollouts.list())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(serde_json::to_value(views).expect("views serialize")))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Read)?;
    let rollouts = rollouts(&state)?;
    let view = tokio::task::spawn_blocking(move || rollouts.get(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(serde_json::to_value(view).expect("views serialize")))
}

/// `POST /api/v1/rollouts/{id}/{action}`: pause, resume, approve, abort, rollback, promote.
pub(super) async fn command(
    State(state): State<ApiState>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Scope::Operator)?;
    let input = match action.as_str() {
        "pause" => Input::Pause,
        "resume" => Input::Resume,
        "approve" => Input::Approve,
        "abort" => Input::Abort,
        "rollback" => Input::Rollback,
        "promote" => Input::PromoteNow,
        other => {
            return Err(ApiError::not_found(format!(
                "no rollout action {other:?}; use pause, resume, approve, abort, rollback or promote"
            )));
        }
    };
    let view = rollouts(&state)?.command(&id, input, &caller.name).await?;
    Ok(Json(serde_json::to_value(view).expect("views serialize")))
}
