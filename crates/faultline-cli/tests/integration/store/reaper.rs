//! Guarantee 4: crash recovery. An expired lease is taken back without any human: re-queued
//! (and its next claim is a recovery) or, with attempts spent, failed with the expiry recorded.

use std::collections::HashSet;
use std::time::Duration;

use faultline::{JobState, NewJob, Store};
use serde_json::json;

use crate::harness::{claim_one, default_queue, wait_for, TestDb};

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

    let recovered = claim_one(&store, "rescuer", Duration::from_secs(60)).await;
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
        sqlx::query_scalar("select jsonb_array_length(errors) from faultline.all_jobs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        histories.iter().all(|&n| n == 1),
        "one expiry entry per job"
    );
}

#[tokio::test]
async fn retention_deletes_only_finished_jobs_older_than_it_and_never_live_ones() {
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
    // Age the two finished jobs by a day (they move to the default partition: none covers
    // yesterday).
    sqlx::query("update faultline.job_history set finished_at = finished_at - interval '1 day'")
        .execute(&db.pool)
        .await
        .unwrap();
    let kept = store
        .maintain_history(Duration::from_secs(2 * 86_400), 100)
        .await
        .unwrap();
    assert_eq!((kept.deleted, kept.dropped), (0, 0));
    assert!(
        kept.created >= 1,
        "the coming partitions are made: {kept:?}"
    );
    let pruned = store
        .maintain_history(Duration::from_secs(3600), 1)
        .await
        .unwrap();
    assert_eq!(pruned.deleted, 2, "batch by batch, all of them: {pruned:?}");
    let left: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 3, "running and queued jobs are never pruned");
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (
            stats[0].succeeded,
            stats[0].failed,
            stats[0].queued,
            stats[0].running
        ),
        (0, 0, 2, 1),
        "the counts follow"
    );
}

#[tokio::test]
async fn retention_drops_whole_partitions_and_their_counts() {
    let db = TestDb::new().await;
    let store = db.store();
    // Minute-wide partitions, and one for a period two hours ago.
    store
        .maintain_history(Duration::from_secs(300), 100)
        .await
        .unwrap();
    let now: i64 = sqlx::query_scalar("select floor(extract(epoch from now()))::int8")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let old = (now - 7200) - (now - 7200).rem_euclid(60);
    sqlx::raw_sql(&format!(
        "create table faultline.job_history_p{old} partition of faultline.job_history
         for values from (to_timestamp({old})) to (to_timestamp({}))",
        old + 60
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let ids: Vec<_> = store
        .enqueue_batch((0..3).map(|i| NewJob::new("k", json!(i))).collect())
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    let claimed = store
        .claim_batch(&default_queue(), "w", 3, Duration::from_secs(60))
        .await
        .unwrap();
    for c in &claimed {
        store.complete(&c.lease).await.unwrap();
    }
    let in_current: i64 = sqlx::query_scalar(
        "select count(*) from faultline.job_history h
         where tableoid <> 'faultline.job_history_default'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        in_current, 3,
        "finished jobs land in a real partition, not the default"
    );
    // Two of them finished two hours ago (moved into the old partition).
    sqlx::query(&format!(
        "update faultline.job_history set finished_at = to_timestamp({old} + 30)
         where id = any($1)"
    ))
    .bind(vec![claimed[0].job.id, claimed[1].job.id])
    .execute(&db.pool)
    .await
    .unwrap();
    let outcome = store
        .maintain_history(Duration::from_secs(3600), 100)
        .await
        .unwrap();
    assert_eq!(
        (outcome.dropped, outcome.dropped_jobs),
        (1, 2),
        "{outcome:?}"
    );
    assert!(store.get(claimed[0].job.id).await.is_err());
    assert_eq!(
        store.get(claimed[2].job.id).await.unwrap().state,
        faultline::JobState::Succeeded
    );
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats[0].succeeded, 1, "{stats:?}");
    let partition_left: bool = sqlx::query_scalar(&format!(
        "select exists (select 1 from pg_class where relname = 'job_history_p{old}')"
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!partition_left, "dropped, not emptied");
}
