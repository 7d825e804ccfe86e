//! Traces across the queue (feature `otel`): one trace from the code that enqueued a job to the
//! handler that ran it, across processes.
//!
//! - Enqueue keeps the W3C `traceparent` of the current `tracing` span (through
//!   `tracing-opentelemetry`) with the job, unless the job carries one already (the API's
//!   `traceparent` header, [`crate::NewJob::with_traceparent`]).
//! - A worker runs every handler inside a span `faultline.job` whose parent is that context
//!   ([`TracingHook`], added by [`crate::worker::Worker::new`]).
//! - [`otlp_from_env`] builds an OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; the
//!   `faultline` binary installs it, so nothing is exported otherwise.
//!
//! Without a `tracing-opentelemetry` layer in the subscriber, spans have no OpenTelemetry
//! context: enqueue keeps the API's `traceparent` header if there was one (else nothing), and
//! the handler's span has no remote parent.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::traceparent::Traceparent;
use crate::worker::{ExecutionHook, JobContext, RunFuture};

pub use crate::traceparent::current_traceparent;

/// The remote parent context that `traceparent` names, or `None` for a malformed one.
pub fn parent_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let t = Traceparent::parse(traceparent).ok()?;
    let sc = SpanContext::new(
        TraceId::from_bytes(t.trace_id),
        SpanId::from_bytes(t.span_id),
        TraceFlags::new(t.flags),
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(sc))
}

/// Runs each handler in a span `faultline.job` (fields: job id, kind, queue, attempt) whose
/// parent is the job's stored `traceparent`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingHook;

impl ExecutionHook for TracingHook {
    fn wrap(&self, ctx: &JobContext, run: RunFuture) -> RunFuture {
        let span = tracing::info_span!(
            "faultline.job",
            otel.name = %format!("run {}", ctx.kind),
            otel.kind = "consumer",
            job.id = %ctx.job_id,
            job.kind = %ctx.kind,
            job.queue = %ctx.queue,
            job.attempt = ctx.attempt,
        );
        if let Some(parent) = ctx.traceparent.as_deref().and_then(parent_context) {
            // Fails only when the subscriber has no OpenTelemetry layer: then there is no
            // trace to continue.
            let _ = span.set_parent(parent);
        }
        Box::pin(run.instrument(span))
    }
}

/// An OTLP (HTTP/protobuf) tracer provider configured by the standard `OTEL_EXPORTER_OTLP_*`
/// variables, or `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is not set. Spans are exported in
/// batches from a background thread; call `shutdown` on the provider before exiting to flush.
///
/// # Errors
/// The exporter's message when the variables describe an exporter that cannot be built.
pub fn otlp_from_env() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build(),
    ))
}
