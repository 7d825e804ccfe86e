//! Traces across the queue (issue 17, feature `otel`): the trace of the code that enqueued a job
//! continues in the span its handler runs in, whether the job was enqueued from a span in
//! process or over HTTP with a `traceparent` header. Exported to an in-process exporter.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use faultline::http::ApiConfig;
use faultline::traceparent::Traceparent;
use faultline::worker::{HandlerRegistry, JobContext};
use faultline::{JobId, JobState, NewJob, Store};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::harness::http::{call, router};
use crate::harness::worker::{config, Running};
use crate::harness::{wait_for, TestDb};

async fn succeeded(store: &Store, id: JobId) {
    wait_for("the job to succeed", Duration::from_secs(20), || async {
        let job = store.get(id).await.ok()?;
        (job.state == JobState::Succeeded).then_some(())
    })
    .await;
}

/// POST `body` to `path` with `traceparent` as the header of that name.
async fn post_traced(
    app: &axum::Router,
    path: &str,
    body: serde_json::Value,
    traceparent: &str,
) -> (StatusCode, serde_json::Value) {
    let (status, _, answer) = call(
        app,
        Method::POST,
        path,
        Some(body),
        &[("traceparent", traceparent)],
    )
    .await;
    (status, answer)
}

// One thread: the subscriber below is this thread's default, and the worker's tasks run here.
#[tokio::test(flavor = "current_thread")]
async fn a_handler_runs_in_a_span_whose_parent_is_the_enqueuers_context() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let db = TestDb::new().await;
    let store = db.store();

    // In process: enqueued inside a span, the job keeps that span's context.
    let request = tracing::info_span!("signup request");
    let (job, parent) = {
        let _entered = request.enter();
        let cx = request.context();
        let parent = cx.span().span_context().clone();
        let job = store
            .enqueue(NewJob::new("traced", json!({})))
            .await
            .unwrap()
            .into_job();
        (job, parent)
    };
    let stored = Traceparent::parse(job.traceparent.as_deref().expect("a traceparent")).unwrap();
    assert_eq!(stored.trace_id, parent.trace_id().to_bytes());
    assert_eq!(stored.span_id, parent.span_id().to_bytes());

    // Given by the library caller, it must be a traceparent.
    match store
        .enqueue(NewJob::new("traced", json!({})).with_traceparent("00-nope"))
        .await
    {
        Err(faultline::StoreError::Invalid { field, .. }) => assert_eq!(field, "traceparent"),
        other => panic!("expected an invalid traceparent, got {other:?}"),
    }

    // Over HTTP: the caller's header is kept; a malformed one is ignored (W3C), not refused.
    let (app, _) = router(&db, ApiConfig::default());
    let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, over_http) =
        post_traced(&app, "/v1/jobs", json!({"kind": "traced"}), header).await;
    assert_eq!(status, StatusCode::CREATED);
    // The job keeps the API's enqueue span, a child of the caller's: the same trace.
    let from_http = Traceparent::parse(header).unwrap();
    let kept = Traceparent::parse(over_http["traceparent"].as_str().unwrap()).unwrap();
    assert_eq!(kept.trace_id, from_http.trace_id);
    assert_ne!(kept.span_id, from_http.span_id);
    let (status, malformed) =
        post_traced(&app, "/v1/jobs", json!({"kind": "traced"}), "00-nope").await;
    assert_eq!(status, StatusCode::CREATED);
    // A new trace starts at the API.
    let fresh = Traceparent::parse(malformed["traceparent"].as_str().unwrap()).unwrap();
    assert_ne!(fresh.trace_id, from_http.trace_id);

    let mut registry = HandlerRegistry::new();
    registry.register_fn(
        "traced",
        |ctx: JobContext, _: serde_json::Value| async move {
            // The handler's own spans join the job's span.
            tracing::info_span!("send mail").in_scope(|| ());
            Ok(ctx.traceparent)
        },
    );
    let worker = Running::start(&store, registry, config("traced"));
    let http_id: JobId = over_http["id"].as_str().unwrap().parse().unwrap();
    for id in [job.id, http_id] {
        succeeded(&store, id).await;
    }
    worker.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let runs: Vec<_> = spans.iter().filter(|s| s.name == "run traced").collect();
    assert!(
        runs.len() >= 2,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let in_process = runs
        .iter()
        .find(|s| s.span_context.trace_id() == parent.trace_id())
        .expect("the in-process job's run span");
    assert_eq!(in_process.parent_span_id, parent.span_id());
    let http_run = runs
        .iter()
        .find(|s| s.span_context.trace_id().to_bytes() == from_http.trace_id)
        .expect("the HTTP job's run span");
    assert_eq!(http_run.parent_span_id.to_bytes(), kept.span_id);
    let enqueue = spans
        .iter()
        .find(|s| {
            s.name == "faultline.enqueue" && s.span_context.span_id().to_bytes() == kept.span_id
        })
        .expect("the API's enqueue span");
    assert_eq!(enqueue.parent_span_id.to_bytes(), from_http.span_id);
    // The handler's span is a child of the run span.
    let inner = spans
        .iter()
        .find(|s| s.name == "send mail" && s.span_context.trace_id() == parent.trace_id())
        .expect("the handler's own span");
    assert_eq!(inner.parent_span_id, in_process.span_context.span_id());
}

// No OpenTelemetry layer in the subscriber (the binary built with `otel` but no exporter
// configured): the spans have no context, so the request's header is what the jobs keep, as
// sent, in a single enqueue and in a batch.
#[tokio::test]
async fn without_a_layer_the_header_is_kept_as_sent() {
    let db = TestDb::new().await;
    let (app, _) = router(&db, ApiConfig::default());
    let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, single) = post_traced(&app, "/v1/jobs", json!({"kind": "traced"}), header).await;
    assert_eq!(status, StatusCode::CREATED, "{single}");
    assert_eq!(single["traceparent"], header);
    let (status, batch) = post_traced(
        &app,
        "/v1/jobs/batch",
        json!({"jobs": [{"kind": "traced"}, {"kind": "traced"}]}),
        header,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let store = db.store();
    for item in batch["results"].as_array().expect("batch results") {
        let id: JobId = item["job"]["id"].as_str().unwrap().parse().unwrap();
        let job = store.get(id).await.unwrap();
        assert_eq!(job.traceparent.as_deref(), Some(header));
    }
    // A malformed header is ignored (W3C): no context at all.
    let (status, malformed) =
        post_traced(&app, "/v1/jobs", json!({"kind": "traced"}), "00-nope").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(malformed["traceparent"].is_null(), "{malformed}");
}
