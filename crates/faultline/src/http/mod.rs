//! The HTTP API (docs/http-api.md): `app(state) -> Router`, one file per resource.
//!
//! Every error is `{"error": {"code", "message"}}` with a fitting status ([`ApiError`]); a
//! client's mistake is a 4xx naming the field, never a 500, and writes nothing. While the
//! database is unreachable, routes that need it answer 503 `database_unavailable` with
//! `Retry-After`; `/health` stays 200 and `/ready` turns 503.

mod auth;
mod browser_guard;
mod claims;
mod error;
mod extract;
mod health;
mod jobs;
mod json_errors;
mod object;
mod observe;
mod openapi;
mod openapi_rules;
mod queues;
mod schedules;
mod server;
mod ui;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{get, patch, post, put};
use axum::{middleware, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use browser_guard::{allowed_host_problem, HostPolicy};
pub use claims::{ClaimRequest, ClaimResponse, DEFAULT_LEASE_TTL_MS};
pub use error::{ApiError, ErrorDetail, ErrorResponse};
pub use jobs::{
    BatchRequest, BatchResponse, BatchResult, BulkRequest, CompleteBatchRequest,
    CompleteBatchResponse, CompleteRequest, DependentsResponse, EnqueueRequest, FailRequest,
    FilterParams, HeartbeatRequest, HeartbeatResponse, LeaseRequest, ListParams, Listing,
    UniqueScopeName,
};
pub use openapi::ApiDoc;
pub use queues::{QueuePatch, QueuesResponse, ThroughputParams, ThroughputResponse};
pub use schedules::SchedulesResponse;
pub use server::{serve, serve_with, ServerConfig};
pub use workers::WorkersResponse;

use crate::job::{Job, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::StoreError;

/// API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// When set, every route but `/health`, `/ready` and `/metrics` needs this bearer token.
    pub api_token: Option<String>,
    /// Largest job payload; a single-job body may be this plus 64 KiB of envelope. Must match
    /// the store's `max_payload_bytes`.
    pub max_payload_bytes: usize,
    /// Largest body of `POST /v1/jobs/batch`.
    pub max_batch_body_bytes: usize,
    /// Requests taking longer are answered 408.
    pub request_timeout: Duration,
    /// Which `Host` names are answered (DNS rebinding; see `browser_guard.rs`). The default
    /// answers any: set `loopback_only` when serving on a loopback address.
    pub hosts: HostPolicy,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            api_token: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_batch_body_bytes: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            hosts: HostPolicy::default(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The job store.
    pub store: Store,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    config: Arc<ApiConfig>,
    token_digest: Option<[u8; 32]>,
    claims: Arc<claims::ClaimWaker>,
}

impl AppState {
    /// State for [`app`].
    pub fn new(store: Store, metrics: Arc<Metrics>, config: ApiConfig) -> Self {
        let token_digest = config
            .api_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(auth::digest);
        AppState {
            store,
            metrics,
            config: Arc::new(config),
            token_digest,
            claims: Arc::default(),
        }
    }

    /// Convert a store result, keeping `faultline_db_up` and `faultline_db_errors_total{op}`
    /// current.
    fn db<T>(&self, op: &str, result: Result<T, StoreError>) -> Result<T, ApiError> {
        match result {
            Ok(value) => {
                self.metrics.db_up.set(1.0);
                Ok(value)
            }
            Err(error) => {
                if let StoreError::Database(_) = error {
                    self.metrics.db_error(op, &error);
                }
                Err(error.into())
            }
        }
    }

    fn count_created(&self, job: &Job) {
        self.metrics
            .jobs_enqueued
            .with_label_values(&[&job.queue, &job.kind])
            .inc();
    }

    fn count_replayed(&self, job: &Job) {
        self.metrics
            .jobs_deduplicated
            .with_label_values(&[&job.queue])
            .inc();
    }
}

/// The API's router.
pub fn app(state: AppState) -> Router {
    let single_body = state.config.max_payload_bytes + 64 * 1024;
    let batch_body = state.config.max_batch_body_bytes;
    let protected = job_routes(Router::new(), batch_body);
    let protected = queue_routes(protected);
    let protected = schedule_routes(protected)
        .route("/v1/workers", get(workers::list))
        .route("/openapi.json", get(openapi::document))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let open = open_routes();
    open.merge(protected)
        .route_layer(middleware::from_fn(browser_guard::require_json_on_changes))
        // After routing, so the matched route template is known; wraps auth, so 401s count.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            observe::record,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            browser_guard::check,
        ))
        .layer(DefaultBodyLimit::max(single_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            json_errors::within_timeout,
        ))
        // Outermost of ours: whatever a layer below answered, an error leaves as JSON.
        .layer(middleware::from_fn(json_errors::as_json))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// `router` with the job routes (`/v1/jobs…`); a batch body may be up to `batch_body` bytes.
fn job_routes(router: Router<AppState>, batch_body: usize) -> Router<AppState> {
    router
        .route("/v1/jobs", post(jobs::enqueue).get(jobs::list))
        .route(
            "/v1/jobs/batch",
            post(jobs::enqueue_batch).layer(DefaultBodyLimit::max(batch_body)),
        )
        .route("/v1/jobs/bulk", post(jobs::bulk))
        .route(
            "/v1/jobs/complete",
            post(jobs::complete_batch).layer(DefaultBodyLimit::max(batch_body)),
        )
        .route("/v1/jobs/heartbeat", post(jobs::heartbeat_batch))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/dependents", get(jobs::dependents))
        .route("/v1/jobs/{id}/heartbeat", post(jobs::heartbeat))
        .route("/v1/jobs/{id}/complete", post(jobs::complete))
        .route("/v1/jobs/{id}/fail", post(jobs::fail))
        .route("/v1/jobs/{id}/release", post(jobs::release))
        .route("/v1/jobs/{id}/steps", get(jobs::steps))
        .route("/v1/jobs/{id}/steps/{name}", put(jobs::record_step))
        .route("/v1/jobs/{id}/sleep", post(jobs::sleep))
        .route("/v1/jobs/{id}/wait", post(jobs::wait))
        .route("/v1/jobs/{id}/signals/{name}", post(jobs::signal))
        .route("/v1/claims", post(claims::claim))
}

/// `router` with the queue routes (`/v1/throughput`, `/v1/queues…`).
fn queue_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/v1/throughput", get(queues::throughput))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}", patch(queues::update))
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
}

/// `router` with the schedule routes (`/v1/schedules…`).
fn schedule_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/v1/schedules", get(schedules::list))
        .route(
            "/v1/schedules/{name}",
            get(schedules::get)
                .put(schedules::put)
                .delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
}

/// The routes open without the token: health, readiness, metrics and the dashboard.
fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
}

// With a token configured, a request without it learns nothing, not even which routes exist:
// the fallbacks answer 401 before 404 or 405 (the open routes excepted).
async fn not_found(
    State(state): State<AppState>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> ApiError {
    unauthorized(&state, &headers, &uri)
        .unwrap_or_else(|| ApiError::NotFound(format!("no route for {method} {}", uri.path())))
}

async fn method_not_allowed(
    State(state): State<AppState>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> ApiError {
    unauthorized(&state, &headers, &uri).unwrap_or_else(|| ApiError::Refused {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("{method} is not allowed on {}", uri.path()),
    })
}

/// 401 for a protected path without the token.
fn unauthorized(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Option<ApiError> {
    (!auth::is_open(uri.path()) && !auth::authorized(state, headers))
        .then_some(ApiError::Unauthorized)
}
