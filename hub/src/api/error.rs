//! API errors: a status and `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
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
