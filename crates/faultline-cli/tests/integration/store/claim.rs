//! Guarantee 1: lease-based execution. A claim is atomic under `for update skip locked`; many
//! claimers never take the same live job twice.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use faultline::{JobId, JobState, NewJob};
use serde_json::json;

use crate::harness::{default_queue, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_is_claimed_exactly_once_by_8_concurrent_claimers() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs = (0..2000).map(|i| NewJob::new("noop", json!({ "i": i })));
    store.enqueue_batch(jobs.collect()).await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let name = format!("claimer-{worker}");
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_batch(&default_queue(), &name, 7, Duration::from_secs(300))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                // Complete every other batch, so claims race with completions too.
                if mine.len() % 2 == 0 {
                    let leases: Vec<_> = batch.iter().map(|c| c.lease.clone()).collect();
                    for result in store.complete_batch(&leases).await.unwrap() {
                        result.unwrap();
                    }
                }
                for claimed in batch {
                    assert_eq!(claimed.lease.owner, name);
                    assert_eq!(claimed.job.attempts, 1);
                    mine.push(claimed.job.id);
                }
            }
            mine
        });
    }
    let mut all: Vec<JobId> = Vec::new();
    while let Some(result) = tasks.join_next().await {
        all.extend(result.unwrap());
    }
    let unique: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!(all.len(), 2000, "every job claimed");
    assert_eq!(unique.len(), 2000, "no job claimed twice");

    let (queued, max_attempts): (i64, i32) = sqlx::query_as(
        "select count(*) filter (where state = 'queued'), max(attempts) from faultline.all_jobs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(queued, 0);
    assert_eq!(max_attempts, 1);
}

#[tokio::test]
async fn claim_takes_priority_then_run_at_order_and_only_eligible_jobs() {
    let db = TestDb::new().await;
    let store = db.store();
    let past = Utc::now() - chrono::Duration::minutes(5);
    let future = Utc::now() + chrono::Duration::hours(1);
    let batch = vec![
        NewJob::new("k", json!("low-late")).with_priority(5),
        NewJob::new("k", json!("high-late")).with_priority(-1),
        NewJob::new("k", json!("high-early"))
            .with_priority(-1)
            .with_run_at(past),
        NewJob::new("k", json!("future")).with_run_at(future),
        NewJob::new("k", json!("other-queue")).with_queue("other"),
    ];
    store.enqueue_batch(batch).await.unwrap();

    let first = store
        .claim_batch(&default_queue(), "w", 2, Duration::from_secs(60))
        .await
        .unwrap();
    let payloads: Vec<_> = first.iter().map(|c| c.job.payload.clone()).collect();
    assert_eq!(payloads, [json!("high-early"), json!("high-late")]);

    let rest = store
        .claim_batch(&default_queue(), "w", 10, Duration::from_secs(60))
        .await
        .unwrap();
    let payloads: Vec<_> = rest.iter().map(|c| c.job.payload.clone()).collect();
    assert_eq!(
        payloads,
        [json!("low-late")],
        "future and other-queue jobs stay"
    );

    let other = store
        .claim_batch(&["other".into()], "w", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    let future_job: (JobState,) =
        sqlx::query_as("select state from faultline.all_jobs where payload::jsonb = '\"future\"'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(future_job.0, JobState::Queued);
}

#[tokio::test]
async fn claim_sets_lease_from_database_clock_with_fresh_increasing_tokens() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .enqueue_batch(vec![NewJob::new("k", json!(1)), NewJob::new("k", json!(2))])
        .await
        .unwrap();
    let ttl = Duration::from_millis(12_345);
    let claimed = store
        .claim_batch(&default_queue(), "w", 2, ttl)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        let job = &c.job;
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.lease_owner.as_deref(), Some("w"));
        assert_eq!(job.lease_token, Some(c.lease.token));
        // Both timestamps come from one now() in one statement: the difference is exactly the
        // TTL, whatever the worker's clock says.
        let lease = job.lease_expires_at.unwrap() - job.started_at.unwrap();
        assert_eq!(lease.num_milliseconds(), 12_345);
        assert!(!c.recovered);
    }
    assert_ne!(claimed[0].lease.token, claimed[1].lease.token);

    // A later claim's token is larger than every earlier one.
    store.enqueue(NewJob::new("k", json!(3))).await.unwrap();
    let later = store
        .claim_batch(&default_queue(), "w", 1, ttl)
        .await
        .unwrap();
    let max_before = claimed.iter().map(|c| c.lease.token).max().unwrap();
    assert!(later[0].lease.token > max_before);
}

#[tokio::test]
async fn claim_with_no_slots_or_no_queues_claims_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    store.enqueue(NewJob::new("k", json!(1))).await.unwrap();
    let ttl = Duration::from_secs(5);
    assert!(store
        .claim_batch(&default_queue(), "w", 0, ttl)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_batch(&[], "w", 5, ttl)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .claim_batch(&default_queue(), "w", 5, ttl)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn claim_across_queues_keeps_one_priority_order() {
    let db = TestDb::new().await;
    let store = db.store();
    let batch = vec![
        NewJob::new("k", json!("a0"))
            .with_queue("a")
            .with_priority(0),
        NewJob::new("k", json!("b1"))
            .with_queue("b")
            .with_priority(1),
        NewJob::new("k", json!("a2"))
            .with_queue("a")
            .with_priority(2),
        NewJob::new("k", json!("b-1"))
            .with_queue("b")
            .with_priority(-1),
        NewJob::new("k", json!("c"))
            .with_queue("c")
            .with_priority(-9),
    ];
    store.enqueue_batch(batch).await.unwrap();
    let queues = vec!["b".to_owned(), "a".to_owned(), "a".to_owned()];
    let claimed = store
        .claim_batch(&queues, "w", 3, Duration::from_secs(60))
        .await
        .unwrap();
    let payloads: Vec<_> = claimed.iter().map(|c| c.job.payload.clone()).collect();
    assert_eq!(payloads, [json!("b-1"), json!("a0"), json!("b1")]);
    let rest = store
        .claim_batch(&queues, "w", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "queue c is not ours");
}
