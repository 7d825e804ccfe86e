//! `POST /v1/jobs/{id}/cancel` and `POST /v1/jobs/{id}/retry`.

use axum::extract::State;
use axum::Json;

use crate::http::error::{ApiError, ErrorResponse};
use crate::http::extract::PathJobId;
use crate::http::AppState;
use crate::job::Job;

/// Cancel a queued or running job (a running one stops at its next heartbeat).
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses(
        (status = 200, body = Job),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "already finished", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
) -> Result<Json<Job>, ApiError> {
    state.db("cancel", state.store.cancel(id).await).map(Json)
}

/// Re-queue a failed or cancelled job with a fresh attempt budget.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses(
        (status = 200, body = Job),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "not failed or cancelled", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn retry(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
) -> Result<Json<Job>, ApiError> {
    state.db("retry", state.store.retry(id).await).map(Json)
}
