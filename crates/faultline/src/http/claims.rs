//! `POST /v1/claims`: a worker in any language claims jobs over HTTP (docs/http-api.md, "The
//! worker protocol"). One claim statement per call, for up to `max` jobs, through the same
//! store call a Rust worker's claim loop makes — queue settings (pause, concurrency and rate
//! limits, concurrency keys) hold exactly as they do for it. With `wait_ms`, an empty answer
//! waits: woken by the API process's own `LISTEN` on the job channel when one of the queues gets
//! a job, and polling besides (a job that becomes due later sends no notification, and a
//! notification can be lost to a dropped connection).

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorResponse};
use super::extract::JsonBody;
use super::AppState;
use crate::job::Job;
use crate::names::{label_problem, name_problem};
use crate::store::{Store, JOB_CHANNEL};

/// The lease a claim takes when the request names none.
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;
/// How often a waiting claim looks again without a notification.
const POLL: Duration = Duration::from_millis(250);

/// A claim.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The worker's name (1–255 bytes, no control characters): the lease owner, and its row in
    /// `GET /v1/workers`.
    #[schema(example = "py-worker-1")]
    pub worker_id: String,
    /// The queues to claim from (1–100 names).
    #[schema(example = json!(["default", "mail"]))]
    pub queues: Vec<String>,
    /// The most jobs to claim, 1 to 1,000 (default 1): the worker's free slots.
    #[serde(default)]
    pub max: Option<u32>,
    /// How long to wait for a job when none is eligible, 0 to 60,000 ms (default 0: answer at
    /// once).
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// The lease of each job claimed, 1,000 to 3,600,000 ms (default 30,000). Heartbeat at a
    /// third of it.
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
}

/// The jobs claimed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// Each job as `GET /v1/jobs/{id}` shows it (without its error history), `running`, with
    /// its `lease_token` and `lease_expires_at`: every report on it must carry the token.
    /// Empty when nothing was eligible within `wait_ms`.
    pub jobs: Vec<Job>,
}

/// A claim checked: what the store is asked.
struct Claim {
    queues: Vec<String>,
    max: u32,
    wait: Duration,
    ttl: Duration,
}

/// `request` checked, naming the field at fault.
fn checked(request: &ClaimRequest) -> Result<Claim, ApiError> {
    let invalid = |field: &str, message: String| ApiError::Invalid {
        field: field.to_owned(),
        message: format!("{field} {message}"),
    };
    if let Some(problem) = label_problem(&request.worker_id) {
        return Err(invalid("worker_id", problem));
    }
    if request.queues.is_empty() || request.queues.len() > 100 {
        return Err(invalid(
            "queues",
            format!("must name 1 to 100 queues, got {}", request.queues.len()),
        ));
    }
    for (i, queue) in request.queues.iter().enumerate() {
        if let Some(problem) = name_problem(queue) {
            return Err(invalid(&format!("queues[{i}]"), problem));
        }
    }
    let max = request.max.unwrap_or(1);
    if !(1..=1000).contains(&max) {
        return Err(invalid("max", format!("must be 1 to 1000, got {max}")));
    }
    let wait = request.wait_ms.unwrap_or(0);
    if wait > 60_000 {
        return Err(invalid(
            "wait_ms",
            format!("must be 0 to 60000, got {wait}"),
        ));
    }
    let ttl = request.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(1_000..=3_600_000).contains(&ttl) {
        return Err(invalid(
            "lease_ttl_ms",
            format!("must be 1000 to 3600000, got {ttl}"),
        ));
    }
    Ok(Claim {
        queues: request.queues.clone(),
        max,
        wait: Duration::from_millis(wait),
        ttl: Duration::from_millis(ttl),
    })
}

/// Claim up to `max` eligible jobs of `queues` for `worker_id`, each leased for
/// `lease_ttl_ms`; with `wait_ms`, wait for one when none is eligible.
///
/// # Errors
/// An [`ApiError`], answered with its status and JSON body.
#[utoipa::path(
    post, path = "/v1/claims", operation_id = "claim_jobs", tag = "workers",
    request_body(content = ClaimRequest, example = json!({"worker_id": "py-worker-1", "queues": ["mail"], "max": 10, "wait_ms": 5000, "lease_ttl_ms": 30000})),
    responses(
        (status = 200, description = "the jobs claimed (possibly none)", body = ClaimResponse),
        (status = 400, description = "malformed JSON", body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse),
        (status = 422, description = "a field out of bounds, named", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn claim(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let claim = checked(&request)?;
    // Subscribed before the first look, so a job enqueued between the look and the wait
    // still wakes it.
    let mut woken = state.claims.subscribe(&state.store);
    let deadline = Instant::now() + claim.wait;
    // Listed for as long as it may wait, and for a lease beyond.
    let listed = claim.ttl.max(claim.wait) + claim.wait;
    state.db(
        "claim",
        state
            .store
            .refresh_remote_worker(&request.worker_id, &claim.queues, claim.max, listed)
            .await,
    )?;
    loop {
        let outcome = state.db(
            "claim",
            state
                .store
                .claim_with_throttles(&claim.queues, &request.worker_id, claim.max, claim.ttl)
                .await,
        )?;
        let now = Instant::now();
        if !outcome.claimed.is_empty() || now >= deadline {
            let jobs = outcome.claimed.into_iter().map(|c| c.job).collect();
            return Ok(Json(ClaimResponse { jobs }));
        }
        let nap = (deadline - now).min(POLL);
        wait_for_queue(&mut woken, &claim.queues, nap).await;
    }
}

/// Until a notification names one of `queues` (or some were missed), or `nap` passes.
async fn wait_for_queue(woken: &mut broadcast::Receiver<String>, queues: &[String], nap: Duration) {
    let until = Instant::now() + nap;
    loop {
        match tokio::time::timeout_at(until, woken.recv()).await {
            Err(_) => return,
            Ok(Ok(queue)) if queues.contains(&queue) => return,
            Ok(Ok(_)) => continue,
            // Missed some: one of them may have been ours.
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return,
            // No listener (yet, or any more): the poll covers it.
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                tokio::time::sleep_until(until).await;
                return;
            }
        }
    }
}

/// The API process's one `LISTEN` on the job channel, fanned out to its waiting claims.
/// Started by the first claim that waits; reconnects after an outage.
#[derive(Debug, Default)]
pub struct ClaimWaker {
    sender: OnceLock<broadcast::Sender<String>>,
}

impl ClaimWaker {
    /// A receiver of the queue names notified from now on.
    fn subscribe(&self, store: &Store) -> broadcast::Receiver<String> {
        self.sender
            .get_or_init(|| {
                let (sender, _) = broadcast::channel(1024);
                tokio::spawn(listen(store.clone(), sender.clone()));
                sender
            })
            .subscribe()
    }
}

/// Forward every notification on the job channel to `sender`, reconnecting with a backoff.
/// Behind a transaction-pooling PgBouncer `LISTEN` does not work: the claims poll instead.
async fn listen(store: Store, sender: broadcast::Sender<String>) {
    let mut failures = 0u32;
    loop {
        if let Ok(mut listener) = PgListener::connect_with(store.pool()).await {
            if listener.listen(JOB_CHANNEL).await.is_ok() {
                failures = 0;
                while let Ok(note) = listener.recv().await {
                    let _ = sender.send(note.payload().to_owned());
                }
            }
        }
        failures = failures.saturating_add(1);
        let delay = Duration::from_millis(250u64 << failures.min(5));
        tokio::time::sleep(delay).await;
    }
}
