//! `/v1/workers`: the live worker processes and the elected maintainer.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::maintenance::MAINTAINER_ROLE;
use crate::store::{LeaderInfo, WorkerInfo};

/// Every worker process that refreshed its row within its lease TTL.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkersResponse {
    /// Sorted by id.
    pub workers: Vec<WorkerInfo>,
    /// The maintainer's current term (its holder may be an API process, not a worker), or
    /// `null` while no process leads.
    pub leader: Option<LeaderInfo>,
}

/// The live workers (id, queues, concurrency, jobs held, start, last refresh, whether it leads)
/// and the current maintainer.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/workers", operation_id = "list_workers", tag = "workers",
    responses((status = 200, body = WorkersResponse), (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<WorkersResponse>, ApiError> {
    let workers = state.db("workers", state.store.workers().await)?;
    let leader = state.db("workers", state.store.leader(MAINTAINER_ROLE).await)?;
    Ok(Json(WorkersResponse { workers, leader }))
}
