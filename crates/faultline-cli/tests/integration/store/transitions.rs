//! The state machine: every transition outside it is refused, by the store's guarded updates
//! and by the database itself, and a refused call changes nothing.

use std::time::Duration;

use faultline::{Claimed, JobId, JobState, Lease, NewJob, Store, StoreError};
use serde_json::json;

use crate::harness::constraint;
use crate::harness::{snapshot, TestDb};

/// A job in each state, with the lease it had (if it ever ran).
struct Fixture {
    queued: JobId,
    running: Claimed,
    succeeded: Claimed,
    failed: Claimed,
    cancelled: Claimed,
}

async fn claim_one(store: &Store, kind: &str) -> Claimed {
    store
        .enqueue(NewJob::new(kind, json!({})).with_queue(kind))
        .await
        .unwrap();
    store
        .claim_batch(&[kind.to_owned()], "w", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0)
}

async fn fixture(store: &Store) -> Fixture {
    let queued = store
        .enqueue(NewJob::new("q", json!({})).with_queue("idle"))
        .await
        .unwrap()
        .job()
        .id;
    let running = claim_one(store, "running").await;
    let succeeded = claim_one(store, "succeeded").await;
    store.complete(&succeeded.lease).await.unwrap();
    let failed = claim_one(store, "failed").await;
    store
        .fail_attempt(&failed.lease, "permanent", false)
        .await
        .unwrap();
    let cancelled = claim_one(store, "cancelled").await;
    store.cancel(cancelled.job.id).await.unwrap();
    Fixture {
        queued,
        running,
        succeeded,
        failed,
        cancelled,
    }
}

fn forged(id: JobId) -> Lease {
    Lease {
        job_id: id,
        token: 42,
        attempt: 1,
        owner: "forger".into(),
        expires_at: chrono::Utc::now(),
    }
}

#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::LeaseLost { .. }) | Err(StoreError::InvalidTransition { .. }) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn every_illegal_transition_is_refused_and_changes_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let f = fixture(&store).await;
    let ttl = Duration::from_secs(60);
    let ids = [
        f.queued,
        f.running.job.id,
        f.succeeded.job.id,
        f.failed.job.id,
        f.cancelled.job.id,
    ];
    let mut before = Vec::new();
    for id in ids {
        before.push(snapshot(&db.pool, id).await);
    }

    // queued: nothing holds a lease on it, so no report can land; it cannot be retried.
    let q = forged(f.queued);
    refused(store.complete(&q).await, "complete a queued job");
    refused(store.heartbeat(&q, ttl).await, "heartbeat a queued job");
    refused(store.fail_attempt(&q, "x", true).await, "fail a queued job");
    refused(store.release(&q).await, "release a queued job");
    refused(store.retry(f.queued).await, "retry a queued job");

    // running: cannot be retried; a forged token cannot report.
    refused(store.retry(f.running.job.id).await, "retry a running job");
    let forged_running = forged(f.running.job.id);
    refused(
        store.complete(&forged_running).await,
        "complete with a forged token",
    );
    refused(
        store.release(&forged_running).await,
        "release with a forged token",
    );

    // succeeded: terminal for good.
    refused(
        store.cancel(f.succeeded.job.id).await,
        "cancel a succeeded job",
    );
    refused(
        store.retry(f.succeeded.job.id).await,
        "retry a succeeded job",
    );
    refused(store.complete(&f.succeeded.lease).await, "complete twice");
    refused(
        store.fail_attempt(&f.succeeded.lease, "x", true).await,
        "fail a succeeded job",
    );
    refused(
        store.heartbeat(&f.succeeded.lease, ttl).await,
        "heartbeat a succeeded job",
    );

    // failed and cancelled: only a retry request moves them.
    for c in [&f.failed, &f.cancelled] {
        refused(store.cancel(c.job.id).await, "cancel a finished job");
        refused(store.complete(&c.lease).await, "complete a finished job");
        refused(store.release(&c.lease).await, "release a finished job");
        refused(
            store.heartbeat(&c.lease, ttl).await,
            "heartbeat a finished job",
        );
    }

    for (id, expected) in ids.iter().zip(&before) {
        assert_eq!(&snapshot(&db.pool, *id).await, expected, "job {id} changed");
    }

    // The legal requests still work afterwards.
    assert_eq!(
        store.retry(f.failed.job.id).await.unwrap().state,
        JobState::Queued
    );
    assert_eq!(store.retry(f.cancelled.job.id).await.unwrap().attempts, 0);
    assert_eq!(
        store.cancel(f.queued).await.unwrap().state,
        JobState::Cancelled
    );
    store.complete(&f.running.lease).await.unwrap();
}

#[tokio::test]
async fn refusals_say_what_and_why() {
    let db = TestDb::new().await;
    let store = db.store();
    let f = fixture(&store).await;
    match store.retry(f.running.job.id).await {
        Err(StoreError::InvalidTransition { state, action, .. }) => {
            assert_eq!((state, action), (JobState::Running, "retry"));
        }
        other => panic!("{other:?}"),
    }
    match store.cancel(f.succeeded.job.id).await {
        Err(e @ StoreError::InvalidTransition { .. }) => {
            assert!(e.to_string().contains("is succeeded: cannot cancel"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let unknown = JobId::new();
    for result in [
        store.get(unknown).await.map(|_| ()),
        store.cancel(unknown).await.map(|_| ()),
        store.retry(unknown).await.map(|_| ()),
    ] {
        assert!(matches!(result, Err(StoreError::NotFound(id)) if id == unknown));
    }
}

#[tokio::test]
async fn the_database_rejects_transitions_outside_the_state_machine() {
    let db = TestDb::new().await;
    let store = db.store();
    let f = fixture(&store).await;
    let attempt = |sql: &'static str, id: JobId| {
        let pool = db.pool.clone();
        async move { sqlx::query(sql).bind(id).execute(&pool).await }
    };
    let cases = [
        // Finished jobs live in history, which refuses any change of state.
        ("update faultline.job_history set state = 'running', lease_expires_at = now() + interval '1 minute', lease_owner = 'x', lease_token = 1 where id = $1", f.succeeded.job.id, "jobs_state_transition"),
        ("update faultline.job_history set state = 'queued', finished_at = null where id = $1", f.succeeded.job.id, "jobs_state_transition"),
        ("update faultline.jobs set state = 'succeeded', finished_at = now() where id = $1", f.queued, "jobs_state_transition"),
        ("update faultline.jobs set state = 'failed', finished_at = now() where id = $1", f.queued, "jobs_state_transition"),
        ("update faultline.job_history set state = 'cancelled' where id = $1", f.failed.job.id, "jobs_state_transition"),
        // The trigger refuses an unknown target state before the CHECK does.
        ("update faultline.jobs set state = 'bogus' where id = $1", f.queued, "jobs_state_transition"),
        ("update faultline.jobs set state = 'running' where id = $1", f.queued, "jobs_lease_check"),
        // Finishing is a move to history, never an update of a live row.
        ("update faultline.jobs set state = 'succeeded', lease_expires_at = null where id = $1", f.running.job.id, "jobs_state_transition"),
        ("update faultline.jobs set finished_at = now() where id = $1", f.queued, "jobs_finished_check"),
        ("update faultline.jobs set max_attempts = 0 where id = $1", f.queued, "jobs_max_attempts_check"),
    ];
    for (sql, id, expected) in cases {
        let before = snapshot(&db.pool, id).await;
        let err = attempt(sql, id).await.expect_err(sql);
        assert_eq!(constraint(&err).as_deref(), Some(expected), "{sql}: {err}");
        assert_eq!(snapshot(&db.pool, id).await, before);
    }
    // A row cannot even be born in an unknown state, or running without a lease.
    for (sql, expected) in [
        ("insert into faultline.jobs (id, kind, state) values (gen_random_uuid(), 'k', 'bogus')", "jobs_state_check"),
        ("insert into faultline.jobs (id, kind, state) values (gen_random_uuid(), 'k', 'running')", "jobs_lease_check"),
        ("insert into faultline.jobs (id, kind, max_attempts) values (gen_random_uuid(), 'k', 0)", "jobs_max_attempts_check"),
    ] {
        let err = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert_eq!(constraint(&err).as_deref(), Some(expected), "{sql}: {err}");
    }
}
