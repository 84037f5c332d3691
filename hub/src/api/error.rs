//! API errors: a status and `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "store failed");
        ApiError::internal(error.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let status = match &error {
            RegistryError::BadName(_) | RegistryError::NumericAlias(_) => StatusCode::BAD_REQUEST,
            RegistryError::NotLoadable(_) | RegistryError::BadFeatureMap(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            RegistryError::UnknownModel(_) | RegistryError::UnknownVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            RegistryError::Retired { .. } => StatusCode::CONFLICT,
            RegistryError::Io(_) | RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response()
    }
}

/// How much of a framework-made error body is kept as the message.
const FRAMEWORK_MESSAGE_LIMIT: usize = 4096;

/// Answers the errors the framework makes itself (405 for a method a path does not take,
/// 413 for a body over a limit, a panic's 500) as `{"error": ...}` like the API's own, with
/// the same status and `Allow` header: a JSON client can read every refusal.
pub async fn json_error_bodies(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let allow = parts.headers.get(ALLOW).cloned();
    let text = axum::body::to_bytes(body, FRAMEWORK_MESSAGE_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        match &allow {
            Some(allow) => format!(
                "this endpoint does not take that method, only {}; GET /openapi.json lists each path's methods",
                allow.to_str().unwrap_or("others")
            ),
            None => "this endpoint does not take that method; GET /openapi.json lists each path's methods".to_owned(),
        }
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_lowercase()
    } else {
        text
    };
    let mut answer = ApiError::new(status, message).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(ALLOW, allow);
    }
    answer
}
