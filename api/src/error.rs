//! The body of every error answer, from the hub and from the agent alike.

use serde::{Deserialize, Serialize};

/// `{"error": "..."}`: what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}
