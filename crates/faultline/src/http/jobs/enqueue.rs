//! `POST /v1/jobs` and `POST /v1/jobs/batch`: the request, its checks and headers, the answer.

use super::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, MAX_BATCH, TRACEPARENT, UNIQUE_DUPLICATE};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::error::{ApiError, ErrorResponse};
use crate::http::extract::JsonBody;
use crate::http::AppState;
use crate::job::{Job, JobId, NewJob, Unique, UniqueScope, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE};
use crate::payload::Payload;
use crate::store::{BatchItem, Enqueued};

/// A job to enqueue.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Which handler runs it (1–255 bytes).
    pub kind: String,
    /// The handler's input (any JSON, kept exactly as sent; `{}` when omitted, `null` when
    /// `null`; at most 1 MiB by default).
    #[serde(default = "empty_object")]
    #[schema(value_type = serde_json::Value)]
    pub payload: Payload,
    /// Queue (default `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Lower runs first (default 0).
    #[serde(default)]
    pub priority: Option<i16>,
    /// Attempt budget, at least 1 (default 5).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Not eligible before this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// At most one job exists per key (also as header `Idempotency-Key`).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Execution timeout of each attempt, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<i32>,
    /// At most the queue's `key_concurrency` (default 1) running jobs share this key (1–255
    /// bytes).
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// Jobs that must succeed first (at most 100): job ids, or in a batch also the index of an
    /// earlier job of the batch. The job waits (`waiting`) until every one has succeeded and is
    /// cancelled as soon as one fails or is cancelled.
    #[serde(default)]
    #[schema(value_type = Vec<DependencyRef>, max_items = 100)]
    pub depends_on: Vec<crate::job::Dependency>,
    /// Uniqueness key (1–255 bytes): at most one job per key in `unique_scope`; a duplicate
    /// returns the existing job (200, header `Unique-Duplicate: true`). Without it, a
    /// `unique_scope` derives the key from kind, queue and payload.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// `active` (default when a `unique_key` is given): at most one queued, waiting or running
    /// job per key; `period`: at most one job per key enqueued within `unique_period_ms`.
    #[serde(default)]
    pub unique_scope: Option<UniqueScopeName>,
    /// The period of a `period` scope, 1 ms to 366 days.
    #[serde(default)]
    pub unique_period_ms: Option<i64>,
}

/// A dependency as the enqueue body names it (the schema's view of
/// [`crate::job::Dependency`]).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum DependencyRef {
    /// A job's id.
    Id(crate::job::JobId),
    /// In a batch: the index of an earlier job of the batch (0 to 999).
    Index(u32),
}

/// The scopes of uniqueness, as named in the enqueue body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum UniqueScopeName {
    /// While the job is queued, waiting or running.
    Active,
    /// Within `unique_period_ms` of the enqueue that created the job.
    Period,
}

// Read as a string first: serde's enum path calls any other JSON token malformed (400), while
// a wrong type or name here is a wrong field (422 naming it).
impl<'de> Deserialize<'de> for UniqueScopeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "active" => Ok(UniqueScopeName::Active),
            "period" => Ok(UniqueScopeName::Period),
            other => Err(serde::de::Error::custom(format!(
                "expected \"active\" or \"period\", got {other:?}"
            ))),
        }
    }
}

/// The request's `traceparent`, if it is a valid one. A malformed header is ignored, as the W3C
/// recommendation asks (a tracing proxy's mistake must not fail an enqueue): the job simply
/// starts no trace of its own.
/// Two `traceparent` headers are ignored both (W3C Trace Context: a receiver that cannot tell
/// which one is meant starts a new trace).
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?.trim();
    crate::traceparent::Traceparent::parse(value)
        .ok()
        .map(|t| t.to_string())
}

/// Run `enqueue` so that the jobs it creates continue the request's trace. With the `otel`
/// feature, inside a span `faultline.enqueue` whose parent is the request's `traceparent` (or,
/// without one, the request's own span): the jobs keep that span's context, or the header
/// itself when no OpenTelemetry layer gives the span one. Without the feature, the header
/// itself is what the jobs keep (see [`traceparent`]).
async fn in_trace<F: std::future::Future>(headers: &HeaderMap, enqueue: F) -> F::Output {
    #[cfg(feature = "otel")]
    {
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let span = tracing::info_span!("faultline.enqueue", otel.kind = "producer");
        let header = traceparent(headers);
        if let Some(parent) = header.as_deref().and_then(crate::otel::parent_context) {
            let _ = span.set_parent(parent);
        }
        // Without an OpenTelemetry layer the span has no context: the header is kept as sent.
        crate::traceparent::with_fallback(header, enqueue.instrument(span)).await
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = headers;
        enqueue.await
    }
}

/// The trace context the jobs of this request keep: the header's, unless the `otel` feature
/// takes the current span's (see [`in_trace`]).
fn job_traceparent(headers: &HeaderMap) -> Option<String> {
    if cfg!(feature = "otel") {
        None
    } else {
        traceparent(headers)
    }
}

fn empty_object() -> Payload {
    Payload::empty_object()
}

impl EnqueueRequest {
    /// The job, or the field whose combination with the others is wrong (named as given, for
    /// the caller to prefix in a batch).
    fn into_new_job(self) -> Result<NewJob, (&'static str, String)> {
        let scope = match (self.unique_scope, self.unique_period_ms) {
            (Some(UniqueScopeName::Period), Some(period_ms)) => {
                Some(UniqueScope::Period { period_ms })
            }
            (Some(UniqueScopeName::Period), None) => {
                return Err((
                    "unique_period_ms",
                    "is required when unique_scope is \"period\"".into(),
                ))
            }
            (_, Some(_)) => {
                return Err((
                    "unique_period_ms",
                    "is allowed only with unique_scope \"period\"".into(),
                ))
            }
            (Some(UniqueScopeName::Active), None) => Some(UniqueScope::Active),
            (None, None) => self.unique_key.as_ref().map(|_| UniqueScope::Active),
        };
        let unique = scope.map(|scope| Unique {
            key: self.unique_key,
            scope,
        });
        Ok(NewJob {
            kind: self.kind,
            payload: self.payload,
            queue: self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
            priority: self.priority.unwrap_or(0),
            max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            run_at: self.run_at,
            idempotency_key: self.idempotency_key,
            timeout_ms: self.timeout_ms,
            concurrency_key: self.concurrency_key,
            depends_on: self.depends_on,
            unique,
            traceparent: None,
        })
    }
}

/// Enqueue a job.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs", operation_id = "enqueue_job", tag = "jobs",
    request_body = EnqueueRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "idempotency key"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, kept with the job (ignored when malformed)"),
    ),
    responses(
        (status = 201, description = "created", body = Job),
        (status = 200, description = "replay of an earlier request with the same key (header Idempotent-Replayed: true), or a job with the same uniqueness key in its scope (header Unique-Duplicate: true)", body = Job),
        (status = 400, description = "malformed JSON, or header and body keys differ", body = ErrorResponse),
        (status = 409, description = "the key is used by a different request", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field is invalid", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(mut request): JsonBody<EnqueueRequest>,
) -> Result<Response, ApiError> {
    header_idempotency_key(&headers, &mut request)?;
    let mut job = request
        .into_new_job()
        .map_err(|(field, message)| ApiError::Invalid {
            field: field.into(),
            message: format!("{field} {message}"),
        })?;
    job.traceparent = job_traceparent(&headers);
    let outcome = state.db(
        "enqueue",
        in_trace(&headers, state.store.enqueue(job)).await,
    )?;
    Ok(enqueued_response(&state, outcome))
}

/// Take the `Idempotency-Key` header, if any, as `request`'s key.
///
/// # Errors
/// 400 when the header is given more than once, is not visible ASCII, or differs from the
/// body's key.
fn header_idempotency_key(
    headers: &HeaderMap,
    request: &mut EnqueueRequest,
) -> Result<(), ApiError> {
    if headers.get_all(IDEMPOTENCY_KEY).iter().nth(1).is_some() {
        // Using either one silently could file the job under a key the client did not mean.
        return Err(ApiError::bad_request(
            "invalid_header",
            "Idempotency-Key is given more than once; send exactly one",
        ));
    }
    if let Some(header_key) = headers.get(IDEMPOTENCY_KEY) {
        let header_key = header_key.to_str().map_err(|_| {
            ApiError::bad_request("invalid_header", "Idempotency-Key must be visible ASCII")
        })?;
        match &request.idempotency_key {
            Some(body_key) if body_key != header_key => {
                return Err(ApiError::bad_request(
                    "idempotency_key_mismatch",
                    "the Idempotency-Key header and the body's idempotency_key differ",
                ))
            }
            _ => request.idempotency_key = Some(header_key.to_owned()),
        }
    }
    Ok(())
}

/// The answer to an enqueue: 201 with the job's location for a new job; 200 with
/// `Idempotent-Replayed` or `Unique-Duplicate` for an existing one. Each is counted.
fn enqueued_response(state: &AppState, outcome: Enqueued) -> Response {
    match outcome {
        Enqueued::Created(job) => {
            state.count_created(&job);
            let location = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id))
                .expect("a UUID path is a valid header value");
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(job),
            )
                .into_response()
        }
        Enqueued::Replayed(job) => {
            state.count_replayed(&job);
            (
                StatusCode::OK,
                [(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"))],
                Json(job),
            )
                .into_response()
        }
        Enqueued::Duplicate(job) => {
            state.count_replayed(&job);
            (
                StatusCode::OK,
                [(UNIQUE_DUPLICATE, HeaderValue::from_static("true"))],
                Json(job),
            )
                .into_response()
        }
    }
}

/// Many jobs in one transaction.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 jobs.
    #[serde(deserialize_with = "crate::http::object::objects")]
    pub jobs: Vec<EnqueueRequest>,
}

/// The outcome for one job of a batch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum BatchResult {
    /// A new job.
    Created {
        /// The job.
        job: Job,
    },
    /// Same key and request as an existing job: that job.
    Replayed {
        /// The job.
        job: Job,
    },
    /// A job with the same uniqueness key exists in its scope: that job.
    Duplicate {
        /// The job.
        job: Job,
    },
    /// The key is used by a different request; nothing was written for this job.
    Conflict {
        /// The key.
        idempotency_key: String,
        /// The job holding it.
        existing_job_id: JobId,
    },
}

/// Results in the order of the request's jobs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// One per job.
    pub results: Vec<BatchResult>,
}

/// Enqueue up to 1,000 jobs in one transaction.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/batch", operation_id = "enqueue_batch", tag = "jobs",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "per-job results (created / replayed / duplicate / conflict)", body = BatchResponse),
        (status = 400, description = "malformed JSON, or an Idempotency-Key header (give each job its own key)", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a job is invalid, named as jobs[i].field (nothing written)", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn enqueue_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    // One key cannot name many jobs, and storing a batch's response to replay it is not what a
    // key means here; refusing beats silently ignoring it.
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return Err(ApiError::bad_request(
            "idempotency_key_on_batch",
            "Idempotency-Key is not accepted on /v1/jobs/batch; give each job its own \
             idempotency_key in the body",
        ));
    }
    if request.jobs.is_empty() || request.jobs.len() > MAX_BATCH {
        return Err(ApiError::Invalid {
            field: "jobs".into(),
            message: format!(
                "jobs must hold 1 to {MAX_BATCH} jobs, got {}",
                request.jobs.len()
            ),
        });
    }
    let trace = job_traceparent(&headers);
    let jobs = request
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            let mut job = job
                .into_new_job()
                .map_err(|(field, message)| ApiError::Invalid {
                    field: format!("jobs[{i}].{field}"),
                    message: format!("jobs[{i}].{field} {message}"),
                })?;
            job.traceparent = trace.clone();
            Ok(job)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let items = state.db(
        "enqueue_batch",
        in_trace(&headers, state.store.enqueue_batch(jobs)).await,
    )?;
    let results = items
        .into_iter()
        .map(|item| batch_result(&state, item))
        .collect();
    Ok(Json(BatchResponse { results }))
}

/// One batch job's result, counted as created or replayed.
fn batch_result(state: &AppState, item: BatchItem) -> BatchResult {
    match item {
        BatchItem::Created(job) => {
            state.count_created(&job);
            BatchResult::Created { job }
        }
        BatchItem::Replayed(job) => {
            state.count_replayed(&job);
            BatchResult::Replayed { job }
        }
        BatchItem::Duplicate(job) => {
            state.count_replayed(&job);
            BatchResult::Duplicate { job }
        }
        BatchItem::Conflict { key, existing } => BatchResult::Conflict {
            idempotency_key: key,
            existing_job_id: existing,
        },
    }
}
