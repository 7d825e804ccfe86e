//! `GET /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/dependents`: reads, and the listing's
//! projection of bulky fields.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::http::error::{ApiError, ErrorResponse};
use crate::http::extract::{PathJobId, QueryParams};
use crate::http::AppState;
use crate::job::{Job, JobFilter, JobId, JobState, Page};
use crate::names::{label_problem, name_problem};
use crate::payload::Payload;

/// A job with its error history.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses(
        (status = 200, body = Job),
        (status = 400, description = "not a UUID", body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
) -> Result<Json<Job>, ApiError> {
    state.db("get", state.store.get(id).await).map(Json)
}

/// The jobs that wait (or waited) for a job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DependentsResponse {
    /// Oldest first, at most 1,000; empty for an unknown id.
    pub jobs: Vec<Job>,
}

/// The jobs that depend on a job (its `depends_on` dependents), live or in history.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/dependents", operation_id = "list_dependents", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses(
        (status = 200, body = DependentsResponse),
        (status = 400, description = "not a UUID", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn dependents(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
) -> Result<Json<DependentsResponse>, ApiError> {
    let jobs = state.db("dependents", state.store.dependents(id).await)?;
    Ok(Json(DependentsResponse { jobs }))
}

/// Listing filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// queued, running, succeeded, failed or cancelled.
    pub state: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only the job with this idempotency key.
    pub key: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub created_after: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    pub created_before: Option<String>,
    /// Page size, 1 to 1,000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Bulky fields to include, comma-separated: `payload`, `result`, `errors`, or `all`. By
    /// default a listing leaves them out (a page of 50 jobs with 1 MiB payloads would be
    /// 50 MiB); `GET /v1/jobs/{id}` always has them.
    pub fields: Option<String>,
}

/// The bulky fields a listing leaves out unless asked.
const BULKY: [&str; 3] = ["payload", "result", "errors"];

/// The bulky fields asked for by `fields`.
fn bulky_fields(fields: Option<&str>) -> Result<Vec<&'static str>, ApiError> {
    let mut wanted = Vec::new();
    for name in fields
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if name == "all" {
            return Ok(BULKY.to_vec());
        }
        match BULKY.iter().find(|b| **b == name) {
            Some(b) => wanted.push(*b),
            None => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "fields: unknown field {:?} (expected payload, result, errors or all)",
                        crate::text::storable(name)
                    ),
                ))
            }
        }
    }
    Ok(wanted)
}

/// Jobs, newest first, cursor-paginated.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "a page of jobs; payload, result and errors only when asked for with `fields`", body = Page),
        (status = 400, description = "bad filter, limit, cursor or fields", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<Listing>, ApiError> {
    let filter = job_filter(FilterParams {
        state: params.state,
        queue: params.queue,
        kind: params.kind,
        key: params.key,
        created_after: params.created_after,
        created_before: params.created_before,
    })
    .map_err(|(field, e)| ApiError::bad_request("invalid_query", format!("{field}: {e}")))?;
    let cursor = list_cursor(params.cursor.as_deref())?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and 1000, got {limit}"),
        ));
    }
    let wanted = bulky_fields(params.fields.as_deref())?;
    let page = state.db(
        "list",
        state
            .store
            .list_page(&filter, cursor, limit, !wanted.is_empty())
            .await,
    )?;
    let jobs = page
        .jobs
        .iter()
        .map(|job| listed(job, &wanted))
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(Listing {
        jobs,
        next_cursor: page.next_cursor,
    }))
}

/// Which jobs: the filters of a listing and of a bulk action, as given (text). `None`
/// matches everything.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// waiting, queued, running, succeeded, failed or cancelled.
    #[serde(default)]
    pub state: Option<String>,
    /// Only this queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Only this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only the job with this idempotency key.
    #[serde(default)]
    pub key: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    #[serde(default)]
    pub created_after: Option<String>,
    /// Only jobs created before this time (RFC 3339).
    #[serde(default)]
    pub created_before: Option<String>,
}

/// `params` checked and parsed, or the field at fault and what is wrong with it.
pub(crate) fn job_filter(params: FilterParams) -> Result<JobFilter, (&'static str, String)> {
    let state = params
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| ("state", e.to_string()))?;
    for (name, value) in [("queue", &params.queue), ("kind", &params.kind)] {
        if let Some(problem) = value.as_deref().and_then(name_problem) {
            return Err((name, problem));
        }
    }
    if let Some(problem) = params.key.as_deref().and_then(label_problem) {
        return Err(("key", problem));
    }
    let created_after = rfc3339("created_after", params.created_after)?;
    let created_before = rfc3339("created_before", params.created_before)?;
    if let (Some(after), Some(before)) = (created_after, created_before) {
        if after >= before {
            return Err((
                "created_after",
                format!("{after:?} must be before created_before ({before:?})"),
            ));
        }
    }
    Ok(JobFilter {
        state,
        queue: params.queue,
        kind: params.kind,
        idempotency_key: params.key,
        created_after,
        created_before,
    })
}

/// `value` read as an RFC 3339 time, or the problem naming `field`.
fn rfc3339(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<DateTime<Utc>>, (&'static str, String)> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    let shown = crate::text::storable(&v);
                    (field, format!("{shown:?} is not an RFC 3339 time ({e})"))
                })
        })
        .transpose()
}

/// The `cursor` query parameter as the id of the last job of the previous page.
///
/// # Errors
/// 400 when it is not a cursor.
fn list_cursor(cursor: Option<&str>) -> Result<Option<JobId>, ApiError> {
    cursor
        .map(|c| {
            c.parse::<JobId>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("cursor {c:?} is not a valid cursor"),
                )
            })
        })
        .transpose()
}

/// A page of jobs as listed: each job with only the bulky fields asked for.
#[derive(Serialize)]
pub struct Listing {
    jobs: Vec<Box<RawValue>>,
    next_cursor: Option<JobId>,
}

/// `job` as JSON without the bulky fields not in `wanted`. The payload and result are written
/// from their own text (a detour through a `serde_json::Value` would reorder keys and respell
/// numbers); every other field through the `Value`.
fn listed(job: &Job, wanted: &[&str]) -> Result<Box<RawValue>, serde_json::Error> {
    let mut fields = match serde_json::to_value(job)? {
        serde_json::Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    };
    fields.remove("payload");
    fields.remove("result");
    for field in BULKY.iter().filter(|f| !wanted.contains(f)) {
        fields.remove(*field);
    }
    #[derive(Serialize)]
    struct Listed<'a> {
        #[serde(flatten)]
        fields: serde_json::Map<String, serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a Payload>,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<Option<&'a Payload>>,
    }
    let listed = Listed {
        fields,
        payload: wanted.contains(&"payload").then_some(&job.payload),
        result: wanted.contains(&"result").then_some(job.result.as_ref()),
    };
    serde_json::value::to_raw_value(&listed)
}
