//! Guarantee 6: bounded retries with backoff; after max_attempts the job is failed for good.

use std::time::Duration;

use faultline::{FailOutcome, JobState, NewJob, StoreError};
use serde_json::json;

use crate::harness::{claim_one, constraint, default_queue, fast_config, wait_for, TestDb};

#[tokio::test]
async fn failed_attempts_requeue_with_growing_backoff_until_max_attempts_then_fail_for_good() {
    let db = TestDb::new().await;
    let store = db.store();
    let backoff = fast_config().backoff;
    let id = store
        .enqueue(NewJob::new("flaky", json!({})).with_max_attempts(5))
        .await
        .unwrap()
        .job()
        .id;

    let mut previous_delay = Duration::ZERO;
    for attempt in 1..=5u32 {
        let claimed = wait_for(
            "the job to become eligible",
            Duration::from_secs(10),
            || {
                let store = store.clone();
                async move {
                    store
                        .claim_batch(&default_queue(), "w", 1, Duration::from_secs(60))
                        .await
                        .unwrap()
                        .pop()
                }
            },
        )
        .await;
        assert_eq!(claimed.lease.attempt, attempt as i32);
        let outcome = store
            .fail_attempt(&claimed.lease, &format!("boom {attempt}"), true)
            .await
            .unwrap();
        match outcome {
            FailOutcome::Retrying(job) => {
                assert!(attempt < 5, "attempt {attempt} must be the last");
                assert_eq!(job.state, JobState::Queued);
                // next_run_at and updated_at come from one now(): their gap is the delay.
                let delay = (job.next_run_at - job.updated_at).to_std().unwrap();
                let ceiling = backoff.ceiling(attempt);
                assert!(
                    delay >= ceiling / 2 && delay < ceiling,
                    "attempt {attempt}: delay {delay:?} outside [{:?}, {ceiling:?})",
                    ceiling / 2
                );
                assert!(delay > previous_delay, "delays must grow: {delay:?}");
                previous_delay = delay;
            }
            FailOutcome::Failed(job) => {
                assert_eq!(attempt, 5, "failed before attempts were spent");
                assert_eq!(job.state, JobState::Failed);
                assert_eq!(job.attempts, 5);
                assert!(job.finished_at.is_some());
            }
        }
    }

    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, job.max_attempts);
    assert_eq!(job.last_error.as_deref(), Some("boom 5"));
    let history: Vec<_> = job
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (1, "boom 1"),
            (2, "boom 2"),
            (3, "boom 3"),
            (4, "boom 4"),
            (5, "boom 5")
        ]
    );
    assert!(job.errors.iter().all(|e| e.worker.as_deref() == Some("w")));
    assert!(job.errors.iter().all(|e| e.reason == "error"));

    // Terminal: never claimed again.
    assert!(store
        .claim_batch(&default_queue(), "w", 10, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn permanent_error_fails_the_job_at_once() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .enqueue(NewJob::new("k", json!({})).with_max_attempts(5))
        .await
        .unwrap();
    let claimed = claim_one(&store, "w", Duration::from_secs(60)).await;
    let outcome = store
        .fail_attempt(&claimed.lease, "bad input", false)
        .await
        .unwrap();
    let FailOutcome::Failed(job) = outcome else {
        panic!("a permanent error must fail the job: {outcome:?}");
    };
    assert_eq!(job.attempts, 1);
    assert_eq!(job.errors.len(), 1);
}

#[tokio::test]
async fn huge_error_text_is_truncated_in_the_history() {
    let db = TestDb::new().await;
    let store = db.store();
    store.enqueue(NewJob::new("k", json!({}))).await.unwrap();
    let claimed = claim_one(&store, "w", Duration::from_secs(60)).await;
    let huge = "é".repeat(1_000_000);
    let job = store
        .fail_attempt(&claimed.lease, &huge, true)
        .await
        .unwrap()
        .job()
        .clone();
    assert!(job.last_error.unwrap().len() <= 4096);
    assert!(job.errors[0].error.len() <= 4096);
}

#[tokio::test]
async fn the_database_refuses_attempts_beyond_max_attempts() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})).with_max_attempts(2))
        .await
        .unwrap()
        .job()
        .id;
    let err = sqlx::query("update faultline.jobs set attempts = 3 where id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(constraint(&err), Some("jobs_attempts_check".into()));
    let err = store
        .enqueue(NewJob::new("k", json!({})).with_max_attempts(0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid { ref field, .. } if field == "max_attempts"
        ),
        "{err:?}"
    );
}
