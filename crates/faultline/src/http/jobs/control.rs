//! `POST /v1/jobs/{id}/cancel`, `POST /v1/jobs/{id}/retry`, and both on a filtered set:
//! `POST /v1/jobs/bulk`.

use axum::extract::State;
use axum::Json;

use crate::http::error::{ApiError, ErrorResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::read::{job_filter, FilterParams};
use crate::http::extract::{JsonBody, PathJobId};
use crate::http::AppState;
use crate::job::Job;
use crate::store::{BulkAction, BulkOutcome};

/// Cancel a queued or running job (a running one stops at its next heartbeat).
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
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
    post, path = "/v1/jobs/{id}/retry", operation_id = "retry_job", tag = "jobs",
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

/// `POST /v1/jobs/bulk`: an action on every job a filter matches.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// `cancel` (applies to waiting, queued and running jobs) or `retry` (failed and
    /// cancelled ones).
    pub action: BulkAction,
    /// Which jobs; an absent filter (or field) matches every job.
    #[serde(default, deserialize_with = "crate::http::object::object")]
    pub filter: FilterParams,
    /// Only count the jobs the action would apply to (what a confirmation shows).
    #[serde(default)]
    pub dry_run: bool,
}

/// Cancel or retry every job a filter matches, at most 10,000 per call (`more` says whether
/// more matched): each job moves as a single cancel or retry would, in its own transaction; one
/// that moved on its own meanwhile is skipped. With `dry_run`, only count them.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/bulk", operation_id = "bulk_jobs", tag = "jobs",
    request_body(content = BulkRequest, example = json!({"action": "retry", "filter": {"state": "failed", "kind": "email.send"}, "dry_run": true})),
    responses(
        (status = 200, body = BulkOutcome),
        (status = 400, description = "malformed JSON or an unknown action", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a filter field is invalid, named as filter.field", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn bulk(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<BulkRequest>,
) -> Result<Json<BulkOutcome>, ApiError> {
    let filter = job_filter(request.filter).map_err(|(field, message)| ApiError::Invalid {
        field: format!("filter.{field}"),
        message: format!("filter.{field}: {message}"),
    })?;
    let outcome = state.db(
        "bulk",
        state
            .store
            .bulk(request.action, &filter, request.dry_run)
            .await,
    )?;
    Ok(Json(outcome))
}
