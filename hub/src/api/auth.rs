//! Bearer-token authentication: every `/api/v1` handler takes a `Caller` and states the
//! scope it needs, so no route can forget the check.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::{ApiError, ApiState};
use crate::data_dir::token_hash;
use crate::store::Scope;

/// Who is calling, from their bearer token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub scope: Scope,
    /// The token's name, recorded in the audit log as the actor.
    pub name: String,
}

impl Caller {
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if needed == Scope::Operator && self.scope != Scope::Operator {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} is read-only; this call needs an operator token",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized("missing Authorization: Bearer TOKEN (set FLOTILLA_TOKEN for the CLI)")
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("Authorization must be \"Bearer TOKEN\""))?
            .trim()
            .to_owned();
        let registry = state.registry.clone();
        let found =
            tokio::task::spawn_blocking(move || registry.store().admin_token(&token_hash(&token)))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))??;
        let (scope, name) = found.ok_or_else(|| unauthorized("unknown token"))?;
        Ok(Caller { scope, name })
    }
}
