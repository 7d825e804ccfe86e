//! `/v1/queues`: per-queue counts and backlog age.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::job::QueueStats;

/// Every queue that holds jobs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueuesResponse {
    /// Sorted by name.
    pub queues: Vec<QueueStats>,
}

/// Per queue: jobs by state and the age of the oldest eligible job.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    responses((status = 200, body = QueuesResponse), (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<QueuesResponse>, ApiError> {
    let queues = state.db("queue_stats", state.store.queue_stats().await)?;
    Ok(Json(QueuesResponse { queues }))
}
