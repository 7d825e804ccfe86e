//! Guarantee 4: crash recovery. An expired lease is taken back without any human: re-queued
//! (and its next claim is a recovery) or, with attempts spent, failed with the expiry recorded.

use std::collections::HashSet;
use std::time::Duration;

use faultline::{JobState, NewJob, Store};
use serde_json::json;

use crate::harness::{default_queue, wait_for, TestDb};

/// Claim everything with a 1 ms lease and wait until the leases have lapsed on the DB clock.
async fn claim_and_let_expire(store: &Store, n: u32) {
    let claimed = store
        .claim_batch(
            &default_queue(),
            "crashed-worker",
            n,
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), n as usize);
    let latest = claimed.iter().map(|c| c.lease.expires_at).max().unwrap();
    wait_for("leases to lapse", Duration::from_secs(10), || {
        let pool = store.pool().clone();
        async move {
            let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
                .fetch_one(&pool)
                .await
                .unwrap();
            (now > latest).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn expired_lease_with_attempts_spent_goes_to_failed_with_the_expiry_in_errors() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})).with_max_attempts(1))
        .await
        .unwrap()
        .job()
        .id;
    claim_and_let_expire(&store, 1).await;
    let outcome = store.reap_expired(100).await.unwrap();
    assert!(outcome.requeued.is_empty());
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(
        (outcome.failed[0].id, outcome.failed[0].queue.as_str()),
        (id, "default")
    );

    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(job.finished_at.is_some());
    assert!(job.lease_expires_at.is_none());
    assert_eq!(job.attempts, 1);
    let error = &job.errors[0];
    assert_eq!(error.reason, "lease_expired");
    assert_eq!(error.attempt, 1);
    assert_eq!(error.worker.as_deref(), Some("crashed-worker"));
    assert!(job.last_error.unwrap().contains("lease expired"));
    assert!(store
        .claim_batch(&default_queue(), "w", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn expired_lease_with_attempts_left_is_requeued_and_its_next_claim_is_a_recovery() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})).with_max_attempts(3))
        .await
        .unwrap()
        .job()
        .id;
    claim_and_let_expire(&store, 1).await;
    let outcome = store.reap_expired(100).await.unwrap();
    assert_eq!(outcome.requeued.len(), 1);
    assert_eq!(
        (outcome.requeued[0].id, outcome.requeued[0].kind.as_str()),
        (id, "k")
    );
    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].reason, "lease_expired");

    let recovered = store
        .claim_batch(&default_queue(), "rescuer", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    assert!(
        recovered.recovered,
        "the claim after an expiry is a recovery"
    );
    assert_eq!(recovered.lease.attempt, 2);
    store.complete(&recovered.lease).await.unwrap();
    // Nothing is left to reap once the rescuer has finished it.
    assert_eq!(store.reap_expired(100).await.unwrap().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reapers_take_back_each_expired_lease_exactly_once() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs = (0..300).map(|i| NewJob::new("k", json!(i))).collect();
    store.enqueue_batch(jobs).await.unwrap();
    claim_and_let_expire(&store, 300).await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let outcome = store.reap_expired(25).await.unwrap();
                if outcome.total() == 0 {
                    break mine;
                }
                mine.extend(outcome.requeued.into_iter().map(|job| job.id));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        all.extend(result.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 300);
    assert_eq!(unique.len(), 300);
    let histories: Vec<i32> =
        sqlx::query_scalar("select jsonb_array_length(errors) from faultline.jobs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        histories.iter().all(|&n| n == 1),
        "one expiry entry per job"
    );
}

#[tokio::test]
async fn pruner_deletes_only_finished_jobs_older_than_retention() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs = (0..5).map(|i| NewJob::new("k", json!(i))).collect();
    store.enqueue_batch(jobs).await.unwrap();
    let claimed = store
        .claim_batch(&default_queue(), "w", 3, Duration::from_secs(60))
        .await
        .unwrap();
    store.complete(&claimed[0].lease).await.unwrap();
    store
        .fail_attempt(&claimed[1].lease, "x", false)
        .await
        .unwrap();
    // Age the two finished jobs by a day.
    sqlx::query(
        "update faultline.jobs set finished_at = finished_at - interval '1 day'
         where finished_at is not null",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        store
            .prune_finished(Duration::from_secs(2 * 86_400), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_finished(Duration::from_secs(3600), 1)
            .await
            .unwrap(),
        1,
        "batches are bounded"
    );
    assert_eq!(
        store
            .prune_finished(Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        1
    );
    let left: i64 = sqlx::query_scalar("select count(*) from faultline.jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 3, "running and queued jobs are never pruned");
}
