//! Durable steps, sleeps and signals over HTTP (docs/durable.md): what a worker in another
//! language needs to do what `JobContext::step`, `sleep_until` and `wait_for_signal` do — each
//! through the same store call, fenced by the claim's `lease_token` — and the signal a caller
//! sends to a waiting job.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::error::{ApiError, ErrorResponse};
use crate::http::extract::{JsonBody, PathJobId};
use crate::http::AppState;
use crate::job::JobId;
use crate::lease::Lease;
use crate::payload::Payload;
use crate::store::{check_name, Signalled, Sleep, Step, Wait, RESERVED_PREFIX};

/// The `{id}` and `{name}` path segments.
pub struct PathJobName(pub JobId, pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathJobName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((id, name)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        let id = id.parse().map_err(|_| {
            ApiError::bad_request("invalid_id", format!("job id {id:?} is not a UUID"))
        })?;
        Ok(PathJobName(id, name))
    }
}

/// A job's steps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepsResponse {
    /// Oldest first.
    pub steps: Vec<Step>,
}

/// The steps a job recorded, oldest first (the library's own records, named `faultline:…`,
/// included).
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/steps", operation_id = "list_steps", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses(
        (status = 200, body = StepsResponse),
        (status = 400, description = "not a UUID", body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn steps(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
) -> Result<Json<StepsResponse>, ApiError> {
    let job = state.db("get", state.store.get(id).await)?;
    Ok(Json(StepsResponse { steps: job.steps }))
}

/// A step's result, to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
    /// What the step returned (any JSON, kept as sent; bounded by `--max-result-bytes`).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Payload>,
}

/// Record step `{name}` of a claimed job under its lease, once: 201 with the step when this
/// call recorded it, 200 with the step recorded earlier when there was one (a name is
/// recorded once; the first result stands).
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    put, path = "/v1/jobs/{id}/steps/{name}", operation_id = "record_step", tag = "workers",
    params(
        ("id" = String, Path, description = "job id (UUID)"),
        ("name" = String, Path, description = "step name: 1–255 bytes, no control characters, not starting with `faultline:`"),
    ),
    request_body(content = StepRequest, example = json!({"lease_token": 42, "result": {"charge_id": "ch_1"}})),
    responses(
        (status = 200, description = "recorded earlier: the first result", body = Step),
        (status = 201, description = "recorded now", body = Step),
        (status = 400, description = "malformed JSON or path", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: nothing recorded", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a bad name, or a result over the limit", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn record_step(
    State(state): State<AppState>,
    PathJobName(id, name): PathJobName,
    JsonBody(request): JsonBody<StepRequest>,
) -> Result<(StatusCode, Json<Step>), ApiError> {
    check_name("name", &name).map_err(ApiError::from)?;
    if name.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::Invalid {
            field: "name".into(),
            message: format!(
                "name {name:?}: names starting with {RESERVED_PREFIX:?} are the server's own"
            ),
        });
    }
    if let Some(step) = state.db("step", state.store.step(id, &name).await)? {
        return Ok((StatusCode::OK, Json(step)));
    }
    let result = request.result.unwrap_or_else(Payload::null);
    let lease = Lease::of(id, request.lease_token);
    let step = state.db(
        "step",
        state.store.record_step(&lease, &name, &result).await,
    )?;
    state.metrics.steps_recorded.inc();
    Ok((StatusCode::CREATED, Json(step)))
}

/// A durable sleep.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
    /// Sleep until this time (RFC 3339). Kept from the first call: a handler that runs again
    /// and asks again (with a later time) gets the first.
    pub until: DateTime<Utc>,
    /// Which sleep of the handler this is, counting from 1 (default 1): the n-th sleep's time
    /// is recorded as step `faultline:sleep:n`.
    #[serde(default)]
    pub seq: Option<u32>,
}

/// What became of a sleep.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SleepResponse {
    /// `sleeping`: the job was put back to run at `until`, its lease and slot given back and
    /// its attempt handed back — stop working on it now. `over`: the time has come; go on.
    pub state: String,
    /// The time recorded for this sleep.
    pub until: DateTime<Utc>,
}

/// Sleep durably: the job is claimed again at `until` (recorded once per `seq`), its attempt
/// not spent, or — when that time has come — the handler goes on.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/sleep", operation_id = "sleep_job", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body(content = SleepRequest, example = json!({"lease_token": 42, "until": "2026-12-08T09:00:00Z"})),
    responses(
        (status = 200, body = SleepResponse),
        (status = 400, description = "malformed JSON or id", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: nothing changed", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn sleep(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    JsonBody(request): JsonBody<SleepRequest>,
) -> Result<Json<SleepResponse>, ApiError> {
    let seq = request.seq.unwrap_or(1);
    if seq == 0 {
        return Err(ApiError::Invalid {
            field: "seq".into(),
            message: "seq counts from 1".into(),
        });
    }
    let lease = state.db("sleep", state.store.lease_of(id, request.lease_token).await)?;
    let key = format!("{RESERVED_PREFIX}sleep:{seq}");
    let slept = state.store.sleep_until(&lease, &key, request.until).await;
    let recorded = |until| SleepResponse {
        state: "sleeping".into(),
        until,
    };
    match state.db("sleep", slept)? {
        Sleep::Sleeping(until) => Ok(Json(recorded(until))),
        Sleep::Over => {
            let step = state.db("sleep", state.store.step(id, &key).await)?;
            let until = step
                .and_then(|s| s.result)
                .and_then(|r| r.to_value().get("until")?.as_str()?.parse().ok())
                .unwrap_or(request.until);
            Ok(Json(SleepResponse {
                state: "over".into(),
                until,
            }))
        }
    }
}

/// A wait for a signal.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    /// The `lease_token` of the claim.
    pub lease_token: i64,
    /// The signal's name (1–255 bytes, no control characters).
    pub signal: String,
    /// Wait at most this long from the first call, 0 to 3,153,600,000,000 ms (100 years).
    pub timeout_ms: u64,
}

/// What became of a wait.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WaitResponse {
    /// `signalled` (with `payload`), `timed_out`, or `parked`: the job waits in `waiting`
    /// until the signal or `until`, its lease and slot given back and its attempt handed back
    /// — stop working on it now; it runs again when either comes.
    pub outcome: String,
    /// The signal's payload (`signalled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Payload>,
    /// When the wait times out (`parked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// Wait for a signal: its payload if it came (before the wait too), `timed_out` once the
/// deadline passed, else the job parks in `waiting`. The answer is recorded: the same call in
/// a later run gets the same.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/wait", operation_id = "wait_for_signal", tag = "workers",
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body(content = WaitRequest, example = json!({"lease_token": 42, "signal": "refund", "timeout_ms": 86400000})),
    responses(
        (status = 200, body = WaitResponse),
        (status = 400, description = "malformed JSON or id", body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "`lease_lost`: nothing changed", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn wait(
    State(state): State<AppState>,
    PathJobId(id): PathJobId,
    JsonBody(request): JsonBody<WaitRequest>,
) -> Result<Json<WaitResponse>, ApiError> {
    check_name("signal", &request.signal).map_err(ApiError::from)?;
    const MAX_TIMEOUT_MS: u64 = 3_153_600_000_000;
    if request.timeout_ms > MAX_TIMEOUT_MS {
        return Err(ApiError::Invalid {
            field: "timeout_ms".into(),
            message: format!(
                "timeout_ms must be 0 to {MAX_TIMEOUT_MS}, got {}",
                request.timeout_ms
            ),
        });
    }
    let lease = state.db("wait", state.store.lease_of(id, request.lease_token).await)?;
    let timeout = std::time::Duration::from_millis(request.timeout_ms);
    let waited = state
        .store
        .wait_for_signal(&lease, &request.signal, timeout)
        .await;
    let (outcome, payload, until) = match state.db("wait", waited)? {
        Wait::Signalled(payload) => ("signalled", Some(payload), None),
        Wait::TimedOut => ("timed_out", None, None),
        Wait::Parked(until) => ("parked", None, Some(until)),
    };
    Ok(Json(WaitResponse {
        outcome: outcome.into(),
        payload,
        until,
    }))
}

/// A signal.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Handed to the waiting handler (any JSON; absent: `null`).
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Payload>,
}

/// What a signal did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignalResponse {
    /// Whether it was kept: `false` when a signal of that name had been sent already (the
    /// first is kept).
    pub kept: bool,
}

/// Send signal `{name}` to a job: kept for its wait (sent before the wait too), the job run
/// again at once if it is parked waiting for it. The first signal of a name is kept.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/signals/{name}", operation_id = "send_signal", tag = "jobs",
    params(
        ("id" = String, Path, description = "job id (UUID)"),
        ("name" = String, Path, description = "signal name: 1–255 bytes, no control characters"),
    ),
    request_body(content = SignalRequest, example = json!({"payload": {"amount_cents": 1200}})),
    responses(
        (status = 202, body = SignalResponse),
        (status = 400, description = "malformed JSON or path", body = ErrorResponse),
        (status = 404, description = "no such job", body = ErrorResponse),
        (status = 409, description = "`invalid_state`: the job has finished", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a bad name", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn signal(
    State(state): State<AppState>,
    PathJobName(id, name): PathJobName,
    JsonBody(request): JsonBody<SignalRequest>,
) -> Result<(StatusCode, Json<SignalResponse>), ApiError> {
    let payload = request.payload.unwrap_or_else(Payload::null);
    let sent = state.store.send_signal(id, &name, &payload).await;
    let kept = match sent {
        Ok(Signalled::Kept) => true,
        Ok(Signalled::Duplicate) => false,
        Err(e) => return state.db("signal", Err(e)),
    };
    if kept {
        state.metrics.signals_received.inc();
    }
    Ok((StatusCode::ACCEPTED, Json(SignalResponse { kept })))
}
