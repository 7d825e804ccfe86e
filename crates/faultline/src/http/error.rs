//! `ApiError`: every failure the API answers with, as `{"error": {"code", "message"}}` and a
//! fitting status. Database details never reach the response body; they are logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::StoreError;
use crate::job::JobId;

/// An API failure. See [`ApiError::status`] for the mapping.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (malformed JSON, bad query or path).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong, naming the field.
        message: String,
    },
    /// 422: the request reads, but a field is out of bounds.
    #[error("{message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 401: a token is required and was missing or wrong.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the job's state or an existing idempotency key.
    #[error("{message}")]
    Conflict {
        /// `idempotency_conflict` or `invalid_state`.
        code: &'static str,
        /// What conflicts.
        message: String,
        /// The job concerned.
        job_id: Option<JobId>,
    },
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A refusal at the transport level with its own status: 405 (method), 408 (request took
    /// too long), 414, 431, or any other non-JSON error a layer produced.
    #[error("{message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 503: the database cannot be reached; retry later.
    #[error("the database is unavailable; retry shortly")]
    Unavailable,
    /// 500: a fault of ours, logged with its detail.
    #[error("internal error")]
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `malformed_json`, `invalid_field`, `not_found`, `idempotency_conflict`,
    /// `invalid_state`, `unauthorized`, `payload_too_large`, `unsupported_media_type`,
    /// `database_unavailable`, …
    pub code: String,
    /// For people: what is wrong, naming the field.
    pub message: String,
    /// The offending field (422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The job concerned (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Refused { status, .. } => *status,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Refused { code, .. } => code,
            ApiError::Invalid { .. } => "invalid_field",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable => "database_unavailable",
            ApiError::Internal => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid { field, message } => ApiError::Invalid {
                message: format!("{field} {message}"),
                field,
            },
            StoreError::NotFound(id) => ApiError::NotFound(format!("job {id} not found")),
            e @ StoreError::ScheduleNotFound(_) => ApiError::NotFound(e.to_string()),
            StoreError::IdempotencyConflict { key, existing } => ApiError::Conflict {
                code: "idempotency_conflict",
                message: format!(
                    "idempotency key {key:?} is already used by job {existing}, created from a \
                     different request"
                ),
                job_id: Some(existing),
            },
            e @ StoreError::InvalidTransition { id, .. } => ApiError::Conflict {
                code: "invalid_state",
                message: e.to_string(),
                job_id: Some(id),
            },
            e @ StoreError::DependencyFailed { dependency, .. } => ApiError::Conflict {
                code: "dependency_failed",
                message: e.to_string(),
                job_id: Some(dependency),
            },
            e @ StoreError::UniqueKeyHeld { id } => ApiError::Conflict {
                code: "unique_key_held",
                message: e.to_string(),
                job_id: Some(id),
            },
            e @ StoreError::LeaseLost { id, .. } => ApiError::Conflict {
                code: "lease_lost",
                message: e.to_string(),
                job_id: Some(id),
            },
            e if e.is_unavailable() => ApiError::Unavailable,
            e => {
                tracing::error!(error = %e, "database error answering a request");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let field = match &self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let job_id = match &self {
            ApiError::Conflict { job_id, .. } => *job_id,
            _ => None,
        };
        let body = ErrorResponse {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                field,
                job_id,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            ApiError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"faultline\""),
                );
            }
            _ => {}
        }
        response
    }
}
