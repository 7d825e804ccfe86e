//! Guarantees 2 and 3: heartbeats keep a lease alive; every report is fenced by the lease
//! token, so a worker that lost its lease changes nothing.

use std::time::Duration;

use faultline::{JobState, LeaseLostReason, NewJob, StoreError};
use serde_json::json;

use crate::harness::{claim_one, default_queue, snapshot, wait_for, TestDb};

fn lost_reason<T>(result: &Result<T, StoreError>) -> Option<LeaseLostReason> {
    match result {
        Err(StoreError::LeaseLost { reason, .. }) => Some(*reason),
        _ => None,
    }
}

fn assert_lost(result: Result<impl std::fmt::Debug, StoreError>, expected: LeaseLostReason) {
    match result {
        Err(StoreError::LeaseLost { reason, .. }) => assert_eq!(reason, expected),
        other => panic!("expected LeaseLost({expected:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn stale_worker_cannot_complete_or_heartbeat_after_lease_lost() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;

    // Worker A claims with a short lease and then goes silent.
    let a = claim_one(&store, "worker-a", Duration::from_millis(50)).await;

    // The reaper takes the job back once the lease has expired on the database clock.
    let reaped = wait_for(
        "the reaper to take back A's lease",
        Duration::from_secs(10),
        || {
            let store = store.clone();
            async move {
                let outcome = store.reap_expired(100).await.unwrap();
                (!outcome.requeued.is_empty()).then_some(outcome)
            }
        },
    )
    .await;
    assert_eq!(reaped.requeued.len(), 1);
    assert_eq!(reaped.requeued[0].id, id);

    // Worker B re-claims it: a recovery, with a larger token.
    let b = claim_one(&store, "worker-b", Duration::from_secs(60)).await;
    assert_eq!(b.job.id, id);
    assert!(b.recovered);
    assert!(b.lease.token > a.lease.token);
    assert_eq!(b.job.attempts, 2);

    // Every report A makes is rejected and changes nothing.
    let before = snapshot(&db.pool, id).await;
    assert_lost(store.complete(&a.lease).await, LeaseLostReason::Superseded);
    assert_lost(
        store.heartbeat(&a.lease, Duration::from_secs(60)).await,
        LeaseLostReason::Superseded,
    );
    assert_lost(
        store.fail_attempt(&a.lease, "late failure", true).await,
        LeaseLostReason::Superseded,
    );
    assert_lost(store.release(&a.lease).await, LeaseLostReason::Superseded);
    assert_eq!(
        snapshot(&db.pool, id).await,
        before,
        "A's reports changed the row"
    );

    // B's reports succeed.
    store
        .heartbeat(&b.lease, Duration::from_secs(60))
        .await
        .unwrap();
    store.complete(&b.lease).await.unwrap();
    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(job.attempts, 2);

    // Even after B finished, A is still refused, and so is a second completion by B.
    assert_lost(store.complete(&a.lease).await, LeaseLostReason::Superseded);
    assert_lost(store.complete(&b.lease).await, LeaseLostReason::Superseded);
}

#[tokio::test]
async fn heartbeat_keeps_a_job_past_its_original_lease_from_being_reaped() {
    let db = TestDb::new().await;
    let store = db.store();
    store.enqueue(NewJob::new("k", json!({}))).await.unwrap();
    let claimed = claim_one(&store, "w", Duration::from_millis(100)).await;
    let original_expiry = claimed.lease.expires_at;
    let extended = store
        .heartbeat(&claimed.lease, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(extended > original_expiry);

    // Wait until the original lease is over on the database clock; the reaper must not touch
    // the job, because the heartbeat moved its expiry.
    wait_for(
        "the original lease to lapse",
        Duration::from_secs(10),
        || {
            let pool = db.pool.clone();
            async move {
                let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                (now > original_expiry).then_some(())
            }
        },
    )
    .await;
    assert_eq!(store.reap_expired(100).await.unwrap().total(), 0);
    store.complete(&claimed.lease).await.unwrap();
}

#[tokio::test]
async fn cancelled_running_job_reports_cancelled_to_its_holder_and_rejects_late_result() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    let claimed = claim_one(&store, "w", Duration::from_secs(60)).await;
    let cancelled = store.cancel(id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(cancelled.lease_expires_at.is_none());

    let before = snapshot(&db.pool, id).await;
    assert_lost(
        store
            .heartbeat(&claimed.lease, Duration::from_secs(60))
            .await,
        LeaseLostReason::Cancelled,
    );
    assert_lost(
        store.complete(&claimed.lease).await,
        LeaseLostReason::Cancelled,
    );
    assert_lost(
        store.fail_attempt(&claimed.lease, "x", true).await,
        LeaseLostReason::Cancelled,
    );
    assert_eq!(snapshot(&db.pool, id).await, before);
}

#[tokio::test]
async fn release_hands_the_job_back_at_once_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})).with_max_attempts(1))
        .await
        .unwrap()
        .job()
        .id;
    for _ in 0..3 {
        let claimed = claim_one(&store, "w", Duration::from_secs(60)).await;
        assert_eq!(claimed.lease.attempt, 1);
        store.release(&claimed.lease).await.unwrap();
        let job = store.get(id).await.unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.attempts, 0);
        assert!(job.errors.is_empty());
        // A released lease is spent: it cannot be released or completed again.
        assert_lost(
            store.release(&claimed.lease).await,
            LeaseLostReason::Superseded,
        );
    }
    // With max_attempts = 1, the job still has its one attempt.
    let last = claim_one(&store, "w", Duration::from_secs(60)).await;
    store.complete(&last.lease).await.unwrap();
}

#[tokio::test]
async fn batch_reports_are_fenced_per_lease() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs = (0..3).map(|i| NewJob::new("k", json!(i))).collect();
    store.enqueue_batch(jobs).await.unwrap();
    let claimed = store
        .claim_batch(&default_queue(), "w", 3, Duration::from_secs(60))
        .await
        .unwrap();
    let leases: Vec<_> = claimed.iter().map(|c| c.lease.clone()).collect();
    store.cancel(leases[1].job_id).await.unwrap();
    let mut forged = leases[2].clone();
    forged.token += 1_000_000;

    let heartbeats = store
        .heartbeat_batch(
            &[leases[0].clone(), leases[1].clone(), forged.clone()],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(heartbeats[0].is_ok());
    assert_eq!(
        lost_reason(&heartbeats[1]),
        Some(LeaseLostReason::Cancelled)
    );
    assert_eq!(
        lost_reason(&heartbeats[2]),
        Some(LeaseLostReason::Superseded)
    );

    let completions = store
        .complete_batch(&[leases[0].clone(), leases[1].clone(), forged])
        .await
        .unwrap();
    assert!(completions[0].is_ok());
    assert!(completions[1].is_err() && completions[2].is_err());
    assert_eq!(
        store.get(leases[2].job_id).await.unwrap().state,
        JobState::Running,
        "a forged token must not complete the job"
    );
}

#[tokio::test]
async fn batch_with_a_stale_and_the_live_lease_of_one_job_succeeds_only_for_the_live_one() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    let stale = claim_one(&store, "w", Duration::from_secs(60)).await.lease;
    sqlx::query("update faultline.jobs set lease_expires_at = now() - interval '1s' where id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.reap_expired(10).await.unwrap().requeued.len(), 1);
    let live = claim_one(&store, "w", Duration::from_secs(60)).await.lease;
    assert_eq!(stale.job_id, live.job_id);

    let heartbeats = store
        .heartbeat_batch(&[stale.clone(), live.clone()], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        lost_reason(&heartbeats[0]),
        Some(LeaseLostReason::Superseded)
    );
    assert!(heartbeats[1].is_ok());

    let completions = store
        .complete_batch(&[live.clone(), stale.clone()])
        .await
        .unwrap();
    assert!(completions[0].is_ok());
    assert_eq!(
        lost_reason(&completions[1]),
        Some(LeaseLostReason::Superseded)
    );
}
