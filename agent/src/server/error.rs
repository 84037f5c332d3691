//! The error every endpoint answers with: a status from its kind and `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flotilla_proto::inference::ErrorBody;

use crate::metrics::ErrorKind;
use crate::repository::LookupError;
use flotilla_runtime::InferError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Overrides the status the kind implies (e.g. 405).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::BadRequest,
            message: message.into(),
            status: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::NotFound,
            message: message.into(),
            status: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    pub fn status(&self) -> StatusCode {
        if let Some(status) = self.status {
            return status;
        }
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InferenceFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<LookupError> for ApiError {
    fn from(error: LookupError) -> ApiError {
        ApiError::not_found(error.to_string())
    }
}

impl From<InferError> for ApiError {
    fn from(error: InferError) -> ApiError {
        let kind = match error {
            InferError::Busy { .. } => ErrorKind::Busy,
            InferError::Run { .. } => ErrorKind::InferenceFailed,
        };
        ApiError {
            kind,
            message: error.to_string(),
            status: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}
