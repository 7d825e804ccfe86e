//! `/v1/queues`: per-queue counts, backlog age and settings; changing the settings (pause,
//! resume, limits).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorResponse};
use super::extract::{JsonBody, PathName, QueryParams};
use super::object::Obj;
use super::AppState;
use crate::job::{QueueStats, RateLimit};
use crate::store::{QueueSettingsPatch, ThroughputSample};

/// Every queue that holds jobs or has settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueuesResponse {
    /// Sorted by name.
    pub queues: Vec<QueueStats>,
}

/// Per queue: jobs by state and the age of the oldest eligible job.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/queues", operation_id = "list_queues", tag = "queues",
    responses((status = 200, body = QueuesResponse), (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<QueuesResponse>, ApiError> {
    let queues = state.db("queue_stats", state.store.queue_stats().await)?;
    Ok(Json(QueuesResponse { queues }))
}

/// `GET /v1/throughput` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ThroughputParams {
    /// How many minutes back, 1 to 1,440 (default 60).
    pub minutes: Option<u32>,
}

/// Jobs finished per queue and minute.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ThroughputResponse {
    /// Oldest first; a minute in which a queue finished nothing is absent. The current minute
    /// and the one before are not counted yet.
    pub minutes: Vec<ThroughputSample>,
}

/// Per queue and minute, the jobs that succeeded, failed and were cancelled (counted from
/// history once a minute by the elected maintainer).
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/throughput", operation_id = "get_throughput", tag = "queues",
    params(ThroughputParams),
    responses(
        (status = 200, body = ThroughputResponse),
        (status = 400, description = "bad minutes", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn throughput(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ThroughputParams>,
) -> Result<Json<ThroughputResponse>, ApiError> {
    let minutes = params.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("minutes must be between 1 and 1440, got {minutes}"),
        ));
    }
    let minutes = state.db("throughput", state.store.throughput(minutes).await)?;
    Ok(Json(ThroughputResponse { minutes }))
}

/// A change to a queue's settings: an absent field is kept, `null` clears a limit.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePatch {
    /// Pause (`true`) or resume (`false`) the queue.
    #[serde(default)]
    pub paused: Option<bool>,
    /// At most this many of its jobs running at once, all workers together (1 to 1,000,000;
    /// `null`: none).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub concurrency_limit: Option<Option<i32>>,
    /// At most `count` job starts per `period_ms` (`null`: none).
    #[serde(default, deserialize_with = "present_object")]
    #[schema(value_type = Option<RateLimit>)]
    pub rate_limit: Option<Option<RateLimit>>,
    /// At most this many running jobs per `concurrency_key` (1 to 1,000,000; `null`: the
    /// default, 1).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub key_concurrency: Option<Option<i32>>,
}

/// A field that is present, `null` included (absent stays `None` through `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// [`present`] for a struct, which must be an object (see [`crate::http::object`]).
fn present_object<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Obj<T>>::deserialize(deserializer).map(|o| Some(o.map(|Obj(t)| t)))
}

/// Change a queue's settings (creating them for a queue that has none). Workers see the change
/// at their next claim.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    patch, path = "/v1/queues/{name}", operation_id = "update_queue", tag = "queues",
    params(("name" = String, Path, description = "queue name")),
    request_body = QueuePatch,
    responses(
        (status = 200, body = QueueStats),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    PathName(name): PathName,
    JsonBody(patch): JsonBody<QueuePatch>,
) -> Result<Json<QueueStats>, ApiError> {
    let patch = QueueSettingsPatch {
        paused: patch.paused,
        concurrency_limit: patch.concurrency_limit,
        rate_limit: patch.rate_limit,
        key_concurrency: patch.key_concurrency,
    };
    let result = state.store.update_queue_settings(&name, &patch).await;
    state.db("queue_settings", result).map(Json)
}

/// Pause a queue: no job of it starts until it is resumed; running ones finish; enqueues are
/// accepted.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/queues/{name}/pause", operation_id = "pause_queue", tag = "queues",
    params(("name" = String, Path, description = "queue name")),
    responses((status = 200, body = QueueStats), (status = 422, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn pause(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<QueueStats>, ApiError> {
    let result = state.store.pause(&name).await;
    state.db("queue_settings", result).map(Json)
}

/// Resume a paused queue.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/queues/{name}/resume", operation_id = "resume_queue", tag = "queues",
    params(("name" = String, Path, description = "queue name")),
    responses((status = 200, body = QueueStats), (status = 422, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn resume(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<QueueStats>, ApiError> {
    let result = state.store.resume(&name).await;
    state.db("queue_settings", result).map(Json)
}
