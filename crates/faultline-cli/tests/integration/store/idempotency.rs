//! Guarantee 5: two submissions with one key yield one job; same request → the existing job,
//! different request → a conflict. Settled by the unique index, so it holds under races.

use std::collections::HashSet;

use faultline::{BatchItem, Enqueued, NewJob, StoreError};
use serde_json::json;

use crate::harness::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_enqueues_with_one_key_make_one_job() {
    let db = TestDb::new().await;
    let store = db.store();
    let job = NewJob::new("email", json!({"to": "a@example.com"})).with_idempotency_key("k-1");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (store, job) = (store.clone(), job.clone());
        tasks.spawn(async move { store.enqueue(job).await.unwrap() });
    }
    let mut created = 0;
    let mut replayed = 0;
    let mut ids = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let outcome = result.unwrap();
        ids.insert(outcome.job().id);
        match outcome {
            Enqueued::Created(_) => created += 1,
            Enqueued::Replayed(_) => replayed += 1,
            Enqueued::Duplicate(_) => panic!("no uniqueness key was given"),
        }
    }
    assert_eq!((created, replayed), (1, 49));
    assert_eq!(ids.len(), 1, "every caller sees the same job");
    let rows: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn same_key_with_a_different_request_is_a_conflict_and_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let first = store
        .enqueue(NewJob::new("email", json!({"to": "a"})).with_idempotency_key("k"))
        .await
        .unwrap();
    assert!(!first.was_replayed());
    let before = crate::harness::snapshot(&db.pool, first.job().id).await;

    for different in [
        NewJob::new("email", json!({"to": "b"})),
        NewJob::new("sms", json!({"to": "a"})),
        NewJob::new("email", json!({"to": "a"})).with_queue("other"),
        NewJob::new("email", json!({"to": "a"})).with_max_attempts(9),
    ] {
        let err = store
            .enqueue(different.with_idempotency_key("k"))
            .await
            .unwrap_err();
        match err {
            StoreError::IdempotencyConflict { key, existing } => {
                assert_eq!(key, "k");
                assert_eq!(existing, first.job().id);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    // The same request again is a replay of the existing job.
    let replay = store
        .enqueue(NewJob::new("email", json!({"to": "a"})).with_idempotency_key("k"))
        .await
        .unwrap();
    assert!(replay.was_replayed());
    assert_eq!(replay.job().id, first.job().id);
    assert_eq!(
        crate::harness::snapshot(&db.pool, first.job().id).await,
        before
    );
}

#[tokio::test]
async fn batch_settles_each_key_once_and_reports_per_job() {
    let db = TestDb::new().await;
    let store = db.store();
    let a = NewJob::new("k", json!({"v": "a"}));
    let b = NewJob::new("k", json!({"v": "b"}));
    let items = store
        .enqueue_batch(vec![
            a.clone().with_idempotency_key("k1"),
            a.clone().with_idempotency_key("k1"),
            b.clone().with_idempotency_key("k1"),
            a.clone(),
            b.clone().with_idempotency_key("k2"),
        ])
        .await
        .unwrap();
    let BatchItem::Created(first) = &items[0] else {
        panic!("{:?}", items[0])
    };
    assert!(matches!(&items[1], BatchItem::Replayed(j) if j.id == first.id));
    assert!(
        matches!(&items[2], BatchItem::Conflict { key, existing } if key == "k1" && *existing == first.id)
    );
    assert!(matches!(&items[3], BatchItem::Created(_)));
    assert!(matches!(&items[4], BatchItem::Created(_)));

    // The whole batch again: every keyed job replays or conflicts, the unkeyed one is new.
    let again = store
        .enqueue_batch(vec![
            a.clone().with_idempotency_key("k1"),
            b.clone().with_idempotency_key("k2"),
            a.clone(),
        ])
        .await
        .unwrap();
    assert!(matches!(&again[0], BatchItem::Replayed(j) if j.id == first.id));
    assert!(matches!(&again[1], BatchItem::Replayed(_)));
    assert!(matches!(&again[2], BatchItem::Created(_)));
    let rows: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 4);
}

#[tokio::test]
async fn batch_of_a_thousand_jobs_is_one_call() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs: Vec<_> = (0..1000)
        .map(|i| NewJob::new("noop", json!({ "i": i })).with_idempotency_key(format!("key-{i}")))
        .collect();
    let items = store.enqueue_batch(jobs.clone()).await.unwrap();
    assert_eq!(items.len(), 1000);
    assert!(items.iter().all(|i| matches!(i, BatchItem::Created(_))));
    // Results come back in input order.
    for (i, item) in items.iter().enumerate() {
        let BatchItem::Created(job) = item else {
            unreachable!()
        };
        assert_eq!(job.payload, json!({ "i": i }));
    }
    let replays = store.enqueue_batch(jobs).await.unwrap();
    assert!(replays.iter().all(|i| matches!(i, BatchItem::Replayed(_))));
}

#[tokio::test]
async fn invalid_jobs_are_refused_naming_the_field_and_nothing_is_written() {
    let db = TestDb::new().await;
    let mut config = crate::harness::fast_config();
    config.max_payload_bytes = 64;
    let store = faultline::Store::with_config(db.pool.clone(), config);
    let cases = [
        (NewJob::new("", json!({})), "kind"),
        (NewJob::new("k".repeat(256), json!({})), "kind"),
        (NewJob::new("k", json!({})).with_queue(""), "queue"),
        (
            NewJob::new("k", json!({})).with_max_attempts(0),
            "max_attempts",
        ),
        (
            NewJob::new("k", json!({})).with_max_attempts(-3),
            "max_attempts",
        ),
        (
            NewJob::new("k", json!({})).with_idempotency_key(""),
            "idempotency_key",
        ),
        (NewJob::new("k", json!({})).with_timeout_ms(0), "timeout_ms"),
        (NewJob::new("k", json!({"big": "x".repeat(100)})), "payload"),
    ];
    for (job, expected) in cases {
        match store.enqueue(job.clone()).await {
            Err(StoreError::Invalid { field, .. }) => assert_eq!(field, expected, "{job:?}"),
            other => panic!("{job:?}: expected Invalid({expected}), got {other:?}"),
        }
        // In a batch, one bad job refuses the whole batch.
        let batch = vec![NewJob::new("ok", json!({})), job];
        match store.enqueue_batch(batch).await {
            Err(StoreError::Invalid { field, .. }) => {
                assert_eq!(field, format!("jobs[1].{expected}"));
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}
