//! A remote worker's reports on a job it claimed over HTTP (`POST /v1/claims`): heartbeat,
//! complete, fail, release. Each carries the claim's `lease_token` and goes through the same
//! fenced store transition as a Rust worker's report, so a token that no longer holds the job
//! changes nothing and is answered 409 `lease_lost`.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::claims::DEFAULT_LEASE_TTL_MS;
use crate::http::error::{ApiError, ErrorResponse};
use crate::http::extract::{JsonBody, PathJobId};
use crate::http::AppState;
use crate::job::{Job, JobId};
use crate::lease::{Lease, LeaseLostReason};
use crate::payload::Payload;
use crate::StoreError;

/// The longest `retry_after_ms`: a year.
const MAX_RETRY_AFTER_MS: u64 = 365 * 24 * 3600 * 1000;

/// A report that carries only the lease.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
}

/// A heartbeat.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
    /// Extend the lease to this long from now, 1,000 to 3,600,000 ms (default 30,000): give
    /// the claim's `lease_ttl_ms`.
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
}

/// The lease after a heartbeat.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// When the lease lapses unless extended again (database clock); for a cancelled job, now.
    pub lease_expires_at: DateTime<Utc>,
    /// The job was cancelled: stop working on it (its result would be refused).
    pub cancel_requested: bool,
}

/// A success.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
    /// The job's result, any JSON (kept as sent), bounded by `--max-result-bytes`.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Payload>,
}

/// A failed attempt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
    /// What went wrong (kept in the job's error history, cut to 4 KiB).
    pub error: String,
    /// Whether another attempt may succeed (default true): a retryable failure is queued
    /// again while attempts remain; a permanent one fails the job at once.
    #[serde(default)]
    pub retryable: Option<bool>,
    /// Run the retry after this long, 0 to a year in ms (default: the server's backoff).
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// The lease `token` names on `id`, or why there is none.
async fn lease(state: &AppState, id: JobId, token: i64) -> Result<Lease, ApiError> {
    state.db("report", state.store.lease_of(id, token).await)
}

/// The job after a report.
async fn job(state: &AppState, id: JobId) -> Result<Json<Job>, ApiError> {
    state.db("get", state.store.get(id).await).map(Json)
}

/// Extend a claimed job's lease; says whether the job was cancelled.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/heartbeat", operation_id = "heartbeat_job", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body(content = HeartbeatRequest, example = json!({"lease_token": 42, "lease_ttl_ms": 30000})),
    responses(
        (status = 200, body = HeartbeatResponse),
        (status = 400, description = "malformed JSON or id", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: the token no longer holds the job", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    JsonBody(request): JsonBody<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let ttl = request.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(1_000..=3_600_000).contains(&ttl) {
        return Err(ApiError::Invalid {
            field: "lease_ttl_ms".into(),
            message: format!("lease_ttl_ms must be 1000 to 3600000, got {ttl}"),
        });
    }
    let ttl = Duration::from_millis(ttl);
    let beat = async {
        let lease = state.store.lease_of(id, request.lease_token).await?;
        state.store.heartbeat(&lease, ttl).await
    };
    match beat.await {
        Ok(lease_expires_at) => {
            // Best effort: a worker listed a little less long is no reason to fail the beat.
            let _ = state.store.touch_remote_worker(id, ttl, None).await;
            Ok(Json(HeartbeatResponse {
                lease_expires_at,
                cancel_requested: false,
            }))
        }
        // Cancelled under this very lease: the holder is told to stop, not that it lost.
        Err(StoreError::LeaseLost {
            reason: LeaseLostReason::Cancelled,
            ..
        }) => Ok(Json(HeartbeatResponse {
            lease_expires_at: Utc::now(),
            cancel_requested: true,
        })),
        Err(e) => state.db("heartbeat", Err(e)),
    }
}

/// Mark a claimed job succeeded, with its result.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/complete", operation_id = "complete_job", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body(content = CompleteRequest, example = json!({"lease_token": 42, "result": {"sent": true}})),
    responses(
        (status = 200, description = "the job, succeeded", body = Job),
        (status = 400, description = "malformed JSON or id", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: the token no longer holds the job; nothing recorded", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "the result is over the limit", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn complete(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    JsonBody(request): JsonBody<CompleteRequest>,
) -> Result<Json<Job>, ApiError> {
    let lease = lease(&state, id, request.lease_token).await?;
    let done = match request.result {
        Some(result) => state.store.complete_with_result(&lease, result).await,
        None => state.store.complete(&lease).await,
    };
    state.db("complete", done)?;
    job(&state, id).await
}

/// Record a failed attempt of a claimed job: queued again (after `retry_after_ms` or the
/// backoff) while attempts remain and the failure is retryable, else failed for good.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/fail", operation_id = "fail_job", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body(content = FailRequest, example = json!({"lease_token": 42, "error": "SMTP 451: try later", "retryable": true, "retry_after_ms": 60000})),
    responses(
        (status = 200, description = "the job: queued for a retry, or failed", body = Job),
        (status = 400, description = "malformed JSON or id", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: the token no longer holds the job; nothing recorded", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn fail(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    JsonBody(request): JsonBody<FailRequest>,
) -> Result<Json<Job>, ApiError> {
    if request.error.trim().is_empty() {
        return Err(ApiError::Invalid {
            field: "error".into(),
            message: "error must not be empty: say what went wrong".into(),
        });
    }
    let delay = match request.retry_after_ms {
        Some(ms) if ms > MAX_RETRY_AFTER_MS => {
            return Err(ApiError::Invalid {
                field: "retry_after_ms".into(),
                message: format!("retry_after_ms must be 0 to {MAX_RETRY_AFTER_MS}, got {ms}"),
            })
        }
        other => other.map(Duration::from_millis),
    };
    let lease = lease(&state, id, request.lease_token).await?;
    let retryable = request.retryable.unwrap_or(true);
    let outcome = state
        .store
        .fail_attempt_after(&lease, &request.error, retryable, delay)
        .await;
    state.db("fail", outcome).map(|o| Json(o.job().clone()))
}

/// Hand a claimed job back unfinished (a worker shutting down): queued at once, the attempt
/// not spent.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/release", operation_id = "release_job", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body(content = LeaseRequest, example = json!({"lease_token": 42})),
    responses(
        (status = 200, description = "the job, queued", body = Job),
        (status = 400, description = "malformed JSON or id", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: the token no longer holds the job", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn release(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> Result<Json<Job>, ApiError> {
    let lease = lease(&state, id, request.lease_token).await?;
    state.db("release", state.store.release(&lease).await)?;
    job(&state, id).await
}

/// Many successes in one call (a busy remote worker's completions, batched).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchRequest {
    /// 1 to 1,000 completions.
    #[serde(deserialize_with = "crate::http::object::objects")]
    pub jobs: Vec<CompleteItem>,
}

/// One completion of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteItem {
    /// The job.
    pub id: JobId,
    /// The `lease_token` of its claim.
    pub lease_token: i64,
    /// Its result, any JSON (kept as sent), bounded by `--max-result-bytes`.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Payload>,
}

/// What became of each completion, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompleteBatchResponse {
    /// One per completion, in request order.
    pub results: Vec<CompleteOutcome>,
}

/// What became of one completion.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompleteOutcome {
    /// The job.
    pub id: JobId,
    /// `completed`; `lease_lost` (the token no longer holds the job: nothing recorded); or
    /// `invalid` (the result is over the limit: nothing recorded, the lease still holds).
    pub outcome: String,
    /// Why, for `lease_lost` and `invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Mark many claimed jobs succeeded in one statement, each fenced by its own lease token, as
/// one `complete` each would: a stale token changes nothing for its job and the others go on.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/complete", operation_id = "complete_jobs", tag = "workers",
    request_body(content = CompleteBatchRequest, example = json!({"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 42, "result": {"sent": true}}]})),
    responses(
        (status = 200, description = "an outcome per completion", body = CompleteBatchResponse),
        (status = 400, description = "malformed JSON", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named as jobs[i].field", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn complete_batch(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CompleteBatchRequest>,
) -> Result<Json<CompleteBatchResponse>, ApiError> {
    if request.jobs.is_empty() || request.jobs.len() > 1000 {
        return Err(ApiError::Invalid {
            field: "jobs".into(),
            message: format!(
                "jobs must hold 1 to 1000 completions, got {}",
                request.jobs.len()
            ),
        });
    }
    let mut outcomes: Vec<Option<CompleteOutcome>> = Vec::with_capacity(request.jobs.len());
    let mut leases = Vec::new();
    let mut texts = Vec::new();
    for item in &request.jobs {
        let text = match item.result.as_ref().map(|r| state.store.result_text(r)) {
            Some(Err(e)) => {
                outcomes.push(Some(outcome(item.id, "invalid", Some(e.to_string()))));
                continue;
            }
            Some(Ok(text)) => text,
            None => None,
        };
        outcomes.push(None);
        leases.push(Lease::of(item.id, item.lease_token));
        texts.push(text);
    }
    let items: Vec<(&Lease, Option<&str>)> = leases
        .iter()
        .zip(texts.iter().map(Option::as_deref))
        .collect();
    let mut done = state
        .db("complete", state.store.complete_many(&items).await)?
        .into_iter();
    let results = outcomes
        .into_iter()
        .zip(&request.jobs)
        .map(|(o, item)| {
            o.unwrap_or_else(|| match done.next() {
                Some(Ok(())) => outcome(item.id, "completed", None),
                Some(Err(e)) => outcome(item.id, "lease_lost", Some(e.to_string())),
                None => outcome(item.id, "lease_lost", None),
            })
        })
        .collect();
    Ok(Json(CompleteBatchResponse { results }))
}

fn outcome(id: JobId, outcome: &str, message: Option<String>) -> CompleteOutcome {
    CompleteOutcome {
        id,
        outcome: outcome.to_owned(),
        message,
    }
}

/// Many heartbeats in one call (a busy remote worker's leases, renewed together).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatchRequest {
    /// 1 to 1,000 leases.
    #[serde(deserialize_with = "crate::http::object::objects")]
    pub jobs: Vec<LeaseItem>,
    /// Extend each lease to this long from now, 1,000 to 3,600,000 ms (default 30,000).
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
}

/// One lease of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseItem {
    /// The job.
    pub id: JobId,
    /// The `lease_token` of its claim.
    pub lease_token: i64,
}

/// What became of each heartbeat, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatBatchResponse {
    /// One per lease, in request order.
    pub results: Vec<HeartbeatOutcome>,
}

/// What became of one heartbeat.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatOutcome {
    /// The job.
    pub id: JobId,
    /// `extended`; `cancelled` (the job was cancelled: stop); `lease_lost` (the token no longer
    /// holds the job: stop, and report nothing).
    pub outcome: String,
    /// The new expiry (`extended`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// Extend many leases in one statement, each fenced by its own token, as one heartbeat each
/// would.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/heartbeat", operation_id = "heartbeat_jobs", tag = "workers",
    request_body(content = HeartbeatBatchRequest, example = json!({"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 42}], "lease_ttl_ms": 30000})),
    responses(
        (status = 200, description = "an outcome per lease", body = HeartbeatBatchResponse),
        (status = 400, description = "malformed JSON", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn heartbeat_batch(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<HeartbeatBatchRequest>,
) -> Result<Json<HeartbeatBatchResponse>, ApiError> {
    if request.jobs.is_empty() || request.jobs.len() > 1000 {
        return Err(ApiError::Invalid {
            field: "jobs".into(),
            message: format!(
                "jobs must hold 1 to 1000 leases, got {}",
                request.jobs.len()
            ),
        });
    }
    let ttl = request.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(1_000..=3_600_000).contains(&ttl) {
        return Err(ApiError::Invalid {
            field: "lease_ttl_ms".into(),
            message: format!("lease_ttl_ms must be 1000 to 3600000, got {ttl}"),
        });
    }
    let ttl = Duration::from_millis(ttl);
    let leases: Vec<Lease> = request
        .jobs
        .iter()
        .map(|j| Lease::of(j.id, j.lease_token))
        .collect();
    let beats = state.db("heartbeat", state.store.heartbeat_batch(&leases, ttl).await)?;
    let results: Vec<HeartbeatOutcome> = leases
        .iter()
        .zip(beats)
        .map(|(lease, beat)| match beat {
            Ok(at) => (lease.job_id, "extended", Some(at)),
            Err(StoreError::LeaseLost {
                reason: LeaseLostReason::Cancelled,
                ..
            }) => (lease.job_id, "cancelled", None),
            Err(_) => (lease.job_id, "lease_lost", None),
        })
        .map(|(id, outcome, lease_expires_at)| HeartbeatOutcome {
            id,
            outcome: outcome.to_owned(),
            lease_expires_at,
        })
        .collect();
    // The worker holding them is listed a while longer (best effort: one of its jobs says who).
    let held = results.iter().filter(|r| r.lease_expires_at.is_some());
    if let Some(first) = held.clone().next() {
        let _ = state
            .store
            .touch_remote_worker(first.id, ttl, Some(held.count()))
            .await;
    }
    Ok(Json(HeartbeatBatchResponse { results }))
}
