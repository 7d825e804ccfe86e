//! Retry control per job and per type: a snooze runs the job again later without spending an
//! attempt or writing an error; `retry_after` sets its own delay; a type's `backoff` replaces
//! the store's; `?` works on `anyhow` errors, keeping their context.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use faultline::testing::{self, RunResult};
use faultline::worker::{HandlerRegistry, JobContext, JobError};
use faultline::{JobArgs, JobState, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::harness::worker::{config, wait_for_state, Running};
use crate::harness::TestDb;

#[tokio::test]
async fn a_snooze_runs_the_job_again_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_fn(
        "wait",
        |ctx: JobContext, _: faultline::Payload| async move {
            if ctx.attempt == 1 {
                // The same attempt number again next time: the snooze did not count.
                return Err(JobError::snooze(Duration::from_secs(3600)));
            }
            Ok(())
        },
    );
    let id = store
        .enqueue(NewJob::new("wait", json!({})).with_max_attempts(1))
        .await
        .unwrap()
        .into_job()
        .id;
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    assert_eq!(ran, RunResult::Snoozed(Duration::from_secs(3600)));
    let job = store.get(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    assert!(job.errors.is_empty(), "{:?}", job.errors);
    assert!(job.next_run_at > Utc::now() + chrono::Duration::minutes(59));
    // A budget of one attempt, and the job still runs: the snooze spent none.
    testing::make_due(&store, &["default"]).await.unwrap();
    let again = testing::run_job(&store, &registry, id).await.unwrap();
    assert_eq!(again, RunResult::Snoozed(Duration::from_secs(3600)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_snoozes_through_its_reporter_and_the_job_then_succeeds() {
    let db = TestDb::new().await;
    let store = db.store();
    let runs = Arc::new(AtomicU32::new(0));
    let mut registry = HandlerRegistry::new();
    let counter = runs.clone();
    registry.register_fn("wait", move |_ctx: JobContext, _: faultline::Payload| {
        let runs = counter.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(JobError::snooze(Duration::from_millis(200)));
            }
            Ok(())
        }
    });
    let id = store
        .enqueue(NewJob::new("wait", json!({})).with_max_attempts(1))
        .await
        .unwrap()
        .into_job()
        .id;
    let worker = Running::start(&store, registry, config("snoozer"));
    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(15)).await;
    worker.stop().await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(job.attempts, 1, "the snoozed run spent no attempt");
    assert!(job.errors.is_empty(), "{:?}", job.errors);
}

#[tokio::test]
async fn retry_after_sets_the_delay_and_still_counts_the_attempt() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_fn("limited", |_ctx: JobContext, _: faultline::Payload| async {
        Err::<(), _>(JobError::retry_after(
            Duration::from_secs(2 * 3600),
            "429 from the partner API",
        ))
    });
    let id = store
        .enqueue(NewJob::new("limited", json!({})))
        .await
        .unwrap()
        .into_job()
        .id;
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    assert_eq!(ran, RunResult::Retrying("429 from the partner API".into()));
    let job = store.get(id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.errors.len()),
        (JobState::Queued, 1, 1)
    );
    let wait = job.next_run_at - Utc::now();
    assert!(wait > chrono::Duration::minutes(119), "{wait}");
}

#[derive(Serialize, Deserialize)]
struct Slow;

impl JobArgs for Slow {
    const KIND: &'static str = "slow.sync";
    /// Attempt N waits N days.
    fn backoff(attempt: u32) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(attempt) * 86_400))
    }
}

#[tokio::test]
async fn a_types_backoff_replaces_the_stores_and_anyhow_errors_keep_their_context() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_job_fn(|_ctx: JobContext, _: Slow| async {
        std::fs::read("/nonexistent/faultline-test").context("reading the partner's export")?;
        Ok(())
    });
    let id = store.enqueue(Slow).await.unwrap().into_job().id;
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    match &ran {
        RunResult::Retrying(message) => assert!(
            message.starts_with("reading the partner's export: ")
                && message.contains("No such file"),
            "{message}"
        ),
        other => panic!("expected a retry, got {other:?}"),
    }
    let wait = store.get(id).await.unwrap().next_run_at - Utc::now();
    assert!(wait > chrono::Duration::hours(23), "{wait}");
}
