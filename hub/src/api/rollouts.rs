//! Rollout endpoints: create from a spec, list, status, and the operator's commands.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api::ErrorBody;
use flotilla_api::rollouts::{RolloutAction, RolloutSpec, RolloutView};

use super::docs::{OperatorErrors, ReadErrors};
use super::extract::{ApiJson, ApiPath};
use super::{ApiError, ApiState, Caller};
use crate::rollout::controller::Input;
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

/// Starts a rollout from its spec (unknown fields refused).
#[utoipa::path(post, operation_id = "rollouts_create", path = "/api/v1/rollouts", tag = "rollouts", security(("bearer" = [])),
    request_body = RolloutSpec,
    responses(
        (status = 201, description = "Started; wave 1 begins unless it waits for approval", body = RolloutView),
        (status = 400, description = "A bad spec (the reason says which field), or no device matches", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 409, description = "The version is retired, or a rollout of the model is in progress", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(spec): ApiJson<RolloutSpec>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    caller.require(Scope::Operator)?;
    spec.check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let view = rollouts(&state)?.create(spec, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Every rollout, newest first.
#[utoipa::path(get, operation_id = "rollouts_list", path = "/api/v1/rollouts", tag = "rollouts", security(("bearer" = [])),
    responses((status = 200, body = Vec<RolloutView>), ReadErrors))]
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<RolloutView>>, ApiError> {
    caller.require(Scope::Read)?;
    let rollouts = rollouts(&state)?;
    let views = tokio::task::spawn_blocking(move || rollouts.list())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(views))
}

/// One rollout: phase, waves, installs, gates, spec.
#[utoipa::path(get, operation_id = "rollouts_show", path = "/api/v1/rollouts/{id}", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Rollout id")),
    responses(
        (status = 200, body = RolloutView),
        (status = 404, description = "Unknown rollout", body = ErrorBody),
        ReadErrors))]
pub(super) async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Scope::Read)?;
    let rollouts = rollouts(&state)?;
    let view = tokio::task::spawn_blocking(move || rollouts.get(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(view))
}

/// An operator's command to a rollout.
#[utoipa::path(post, operation_id = "rollouts_command", path = "/api/v1/rollouts/{id}/{action}", tag = "rollouts",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Rollout id"),
           ("action" = RolloutAction, Path, description = "pause, resume, approve, abort, rollback or promote")),
    responses(
        (status = 200, description = "The rollout after the command", body = RolloutView),
        (status = 404, description = "Unknown rollout or action", body = ErrorBody),
        (status = 409, description = "The rollout's phase does not allow the command", body = ErrorBody),
        OperatorErrors))]
pub(super) async fn command(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath((id, action)): ApiPath<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Scope::Operator)?;
    let input = match RolloutAction::parse(&action) {
        Some(RolloutAction::Pause) => Input::Pause,
        Some(RolloutAction::Resume) => Input::Resume,
        Some(RolloutAction::Approve) => Input::Approve,
        Some(RolloutAction::Abort) => Input::Abort,
        Some(RolloutAction::Rollback) => Input::Rollback,
        Some(RolloutAction::Promote) => Input::PromoteNow,
        None => {
            return Err(ApiError::not_found(format!(
                "no rollout action {action:?}; use pause, resume, approve, abort, rollback or promote"
            )));
        }
    };
    let view = rollouts(&state)?.command(&id, input, &caller.name).await?;
    Ok(Json(view))
}
