//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers' annotations and the
//! request and response types themselves, so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::claims::{ClaimRequest, ClaimResponse};
use super::error::{ErrorDetail, ErrorResponse};
use super::jobs::{
    BatchRequest, BatchResponse, BatchResult, BulkRequest, CompleteBatchRequest,
    CompleteBatchResponse, CompleteItem, CompleteOutcome, CompleteRequest, DependencyRef,
    DependentsResponse, EnqueueRequest, FailRequest, FilterParams, HeartbeatBatchRequest,
    HeartbeatBatchResponse, HeartbeatOutcome, HeartbeatRequest, HeartbeatResponse, LeaseItem,
    LeaseRequest,
};
use super::jobs::{
    SignalRequest, SignalResponse, SleepRequest, SleepResponse, StepRequest, StepsResponse,
    WaitRequest, WaitResponse,
};
use super::queues::{QueuePatch, QueuesResponse, ThroughputResponse};
use super::schedules::SchedulesResponse;
use super::workers::WorkersResponse;
use super::{claims, health, jobs, queues, schedules, workers};
use crate::job::{AttemptError, Job, JobId, JobState, Page, QueueStats, RateLimit};
use crate::schedule::{Misfire, Schedule, ScheduleSpec};
use crate::store::{
    BulkAction, BulkOutcome, BulkRefusal, LeaderInfo, Step, ThroughputSample, WaitingFor,
    WorkerInfo,
};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Faultline",
        description = "A PostgreSQL-backed job queue built for correctness under failure. \
                       When FAULTLINE_API_TOKEN is set, every route but /health, /ready and \
                       /metrics needs `Authorization: Bearer <token>` (401 otherwise). Every \
                       change needs `Content-Type: application/json` (415 otherwise). Integers \
                       are JSON integers: `63`, not `63.0` (422 naming the field). Lengths are \
                       counted in bytes."
    ),
    paths(
        health::health, health::ready, health::metrics,
        jobs::enqueue, jobs::enqueue_batch, jobs::get, jobs::list, jobs::cancel, jobs::retry, jobs::bulk,
        claims::claim, jobs::heartbeat, jobs::complete, jobs::complete_batch, jobs::heartbeat_batch, jobs::fail, jobs::release,
        jobs::steps, jobs::record_step, jobs::sleep, jobs::wait, jobs::signal,
        jobs::dependents, queues::throughput, queues::list, queues::update, queues::pause, queues::resume, workers::list,
        schedules::put, schedules::list, schedules::get, schedules::delete, schedules::pause,
        schedules::resume, document,
    ),
    components(schemas(
        Job, JobId, JobState, AttemptError, Page, QueueStats, QueuesResponse,
        EnqueueRequest, BatchRequest, BatchResponse, BatchResult, ErrorResponse, ErrorDetail,
        WorkersResponse, WorkerInfo, LeaderInfo, QueuePatch, RateLimit, Schedule, ScheduleSpec,
        SchedulesResponse, Misfire, DependentsResponse, ThroughputResponse, ThroughputSample,
        BulkRequest, BulkAction, BulkOutcome, BulkRefusal, FilterParams, ClaimRequest,
        ClaimResponse, HeartbeatRequest, HeartbeatResponse, CompleteRequest, FailRequest,
        LeaseRequest, DependencyRef, CompleteBatchRequest, CompleteItem, CompleteBatchResponse,
        CompleteOutcome, HeartbeatBatchRequest, LeaseItem, HeartbeatBatchResponse, HeartbeatOutcome,
        StepsResponse, StepRequest, SleepRequest, SleepResponse, WaitRequest,
        WaitResponse, SignalRequest, SignalResponse, Step, WaitingFor,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Enqueue, inspect, cancel and retry jobs"),
        (name = "queues", description = "Queue statistics and settings (pause, limits)"),
        (name = "schedules", description = "Cron schedules: exactly one job per slot"),
        (name = "workers", description = "Live worker processes and the elected maintainer; the worker protocol (claim, heartbeat, complete, fail, release) for workers in any language"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document")),
    security((), ("bearer" = [])))]
pub async fn document() -> Json<serde_json::Value> {
    Json(exact().clone())
}

/// The derived document with the rules the derive cannot express
/// ([`super::openapi_rules`]), made once.
pub fn exact() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        super::openapi_rules::apply(&mut doc);
        doc
    })
}
