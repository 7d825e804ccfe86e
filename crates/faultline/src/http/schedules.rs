//! `/v1/schedules` (docs/operations.md): declare, read, pause, resume and delete cron schedules.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorResponse};
use super::extract::{JsonBody, PathName};
use super::AppState;
use crate::schedule::{Schedule, ScheduleSpec};

/// Every schedule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulesResponse {
    /// Sorted by name.
    pub schedules: Vec<Schedule>,
}

/// Create or replace a schedule. Replacing it with the same cron and time zone keeps what it has
/// fired; a new cron or zone starts from now.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    put, path = "/v1/schedules/{name}", operation_id = "put_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name (1–200 bytes)")),
    request_body = ScheduleSpec,
    responses(
        (status = 201, description = "created", body = Schedule),
        (status = 200, description = "replaced", body = Schedule),
        (status = 422, description = "a bad field, named (cron, timezone, kind, queue, …)", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn put(
    State(state): State<AppState>,
    PathName(name): PathName,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let (schedule, created) = state.db("schedule", state.store.put_schedule(&name, &spec).await)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(schedule)))
}

/// Every schedule, with its next and last runs.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/schedules", operation_id = "list_schedules", tag = "schedules",
    responses((status = 200, body = SchedulesResponse), (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<SchedulesResponse>, ApiError> {
    let schedules = state.db("schedule", state.store.schedules().await)?;
    Ok(Json(SchedulesResponse { schedules }))
}

/// One schedule.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/schedules/{name}", operation_id = "get_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<Schedule>, ApiError> {
    state
        .db("schedule", state.store.schedule(&name).await)
        .map(Json)
}

/// Delete a schedule (the jobs it enqueued stay).
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    delete, path = "/v1/schedules/{name}", operation_id = "delete_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<StatusCode, ApiError> {
    state.db("schedule", state.store.delete_schedule(&name).await)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a schedule: it fires nothing until resumed, and the slots of the pause are not
/// misfires.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/pause", operation_id = "pause_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn pause(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<Schedule>, ApiError> {
    let result = state.store.set_schedule_paused(&name, true).await;
    state.db("schedule", result).map(Json)
}

/// Resume a paused schedule, from now.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/resume", operation_id = "resume_schedule", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses((status = 200, body = Schedule), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security((), ("bearer" = []))
)]
pub async fn resume(
    State(state): State<AppState>,
    PathName(name): PathName,
) -> Result<Json<Schedule>, ApiError> {
    let result = state.store.set_schedule_paused(&name, false).await;
    state.db("schedule", result).map(Json)
}
