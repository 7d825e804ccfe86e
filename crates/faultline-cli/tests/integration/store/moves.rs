//! Every move of a job between the live table and history (finish, fail, cancel, retry) and
//! every statement that returns a job (claim, plain and limited; fail; cancel; retry) keeps and
//! returns every column: a job with every field set goes through them all, and whatever a move
//! is not meant to change must come out as it went in.

use std::time::Duration;

use faultline::{Dependency, Job, JobId, JobState, NewJob, Store, StoreError, Unique, UniqueScope};
use serde_json::{json, Value};

use crate::harness::TestDb;

/// The columns a transition may change; every other column (a new one included) must survive
/// every move unchanged.
const CHANGING: [&str; 17] = [
    "eligible_at",
    "state",
    "attempts",
    "next_run_at",
    "lease_owner",
    "lease_expires_at",
    "lease_token",
    "needs_recovery",
    "last_error",
    "errors",
    "started_at",
    "finished_at",
    "updated_at",
    "result",
    "pending_dependencies",
    // What a parked job waits for (durable waits): set by the park, cleared by the wake.
    "waiting_signal",
    "waiting_until",
];

/// The job's row, from whichever table holds it, without the columns a transition may change.
async fn fixed_columns(db: &TestDb, id: JobId) -> Value {
    // `json`, not `jsonb`: the payload's `\u0000` and number digits as stored.
    let row: String = sqlx::query_scalar(
        "select row_to_json(j)::text from faultline.jobs j where id = $1
         union all
         select row_to_json(h)::text from faultline.job_history h where id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let row: Value = serde_json::from_str(&row).unwrap();
    let mut row = row.as_object().unwrap().clone();
    for column in CHANGING {
        row.remove(column);
    }
    Value::Object(row)
}

/// What a statement returned, against the job as read back (the claim leaves out the error
/// history, which no handler reads).
async fn assert_complete(store: &Store, returned: &Job, what: &str, with_errors: bool) {
    let mut read = serde_json::to_value(store.get(returned.id).await.unwrap()).unwrap();
    let mut returned = serde_json::to_value(returned).unwrap();
    if !with_errors {
        read.as_object_mut().unwrap().remove("errors");
        returned.as_object_mut().unwrap().remove("errors");
    }
    assert_eq!(returned, read, "{what} returned an incomplete job");
}

async fn claim_one(store: &Store) -> faultline::Claimed {
    // A queue that has just become keyed is claimed through the limited claim once the
    // claimers' list of limited queues is refreshed (at most 250 ms).
    crate::harness::wait_for("a claim", Duration::from_secs(10), || async {
        store
            .claim_batch(&["moves".into()], "mover", 1, Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
    })
    .await
}

#[tokio::test]
async fn every_move_keeps_every_column_and_every_statement_returns_a_complete_job() {
    let db = TestDb::new().await;
    let store = db.store();
    let parent = store
        .enqueue(NewJob::new("noop", json!({})).with_queue("moves-parent"))
        .await
        .unwrap()
        .into_job()
        .id;
    let lease = store
        .claim_batch(&["moves-parent".into()], "p", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap()
        .lease;
    store.complete(&lease).await.unwrap();

    let full = NewJob {
        priority: 3,
        timeout_ms: Some(5_000),
        concurrency_key: Some("tenant-7".into()),
        depends_on: vec![Dependency::Job(parent)],
        unique: Some(Unique {
            key: Some("refresh-7".into()),
            scope: UniqueScope::Active,
        }),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..NewJob::new("mover", json!({"n": 1.50, "z": "\u{0}", "a": [1, 2]}))
            .with_queue("moves")
            .with_max_attempts(3)
            .with_idempotency_key("moves-1")
    };
    let id = store.enqueue(full).await.unwrap().into_job().id;
    let before = fixed_columns(&db, id).await;
    for column in [
        "unique_key",
        "traceparent",
        "concurrency_key",
        "idempotency_key",
    ] {
        assert!(!before[column].is_null(), "{column} not set: {before}");
    }
    assert_eq!(before["depends_on"], json!([parent.to_string()]));

    // Claimed (a keyed queue: the limited claim), failed and re-queued, claimed, failed for good.
    let claimed = claim_one(&store).await;
    assert_complete(&store, &claimed.job, "the limited claim", false).await;
    assert_eq!(fixed_columns(&db, id).await, before, "claim");
    let retrying = store
        .fail_attempt(&claimed.lease, "first", true)
        .await
        .unwrap();
    assert!(matches!(retrying, faultline::FailOutcome::Retrying(_)));
    assert_complete(&store, retrying.job(), "fail_attempt (retrying)", true).await;
    assert_eq!(fixed_columns(&db, id).await, before, "fail, re-queued");
    faultline::testing::make_due(&store, &["moves"])
        .await
        .unwrap();
    let claimed = claim_one(&store).await;
    let failed = store
        .fail_attempt(&claimed.lease, "second", false)
        .await
        .unwrap();
    assert!(matches!(failed, faultline::FailOutcome::Failed(_)));
    assert_complete(&store, failed.job(), "fail_attempt (failed)", true).await;
    assert_eq!(fixed_columns(&db, id).await, before, "fail, to history");

    // Retried (history → live), cancelled (live → history), retried, claimed, completed.
    let retried = store.retry(id).await.unwrap();
    assert_eq!(retried.state, JobState::Queued);
    assert_complete(&store, &retried, "retry", true).await;
    assert_eq!(fixed_columns(&db, id).await, before, "retry");
    let cancelled = store.cancel(id).await.unwrap();
    assert_complete(&store, &cancelled, "cancel", true).await;
    assert_eq!(fixed_columns(&db, id).await, before, "cancel");
    store.retry(id).await.unwrap();
    let claimed = claim_one(&store).await;
    store.complete(&claimed.lease).await.unwrap();
    let done = store.get(id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(fixed_columns(&db, id).await, before, "complete");

    // The plain claim returns a complete job too.
    let plain = store
        .enqueue(NewJob {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            unique: Some(Unique {
                key: Some("plain-1".into()),
                scope: UniqueScope::Period { period_ms: 60_000 },
            }),
            ..NewJob::new("mover", json!({})).with_queue("moves-plain")
        })
        .await
        .unwrap()
        .into_job()
        .id;
    let claimed = store
        .claim_batch(&["moves-plain".into()], "p", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(claimed.job.id, plain);
    assert_complete(&store, &claimed.job, "the plain claim", false).await;
}

#[tokio::test]
async fn a_retry_never_makes_two_live_jobs_share_a_unique_key() {
    let db = TestDb::new().await;
    let store = db.store();
    let unique = || {
        Some(Unique {
            key: Some("one-refresh".into()),
            scope: UniqueScope::Active,
        })
    };
    let first = store
        .enqueue(NewJob {
            unique: unique(),
            ..NewJob::new("mover", json!({}))
        })
        .await
        .unwrap()
        .into_job()
        .id;
    store.cancel(first).await.unwrap();
    // The key is free once the first job has finished: a second job takes it.
    let second = store
        .enqueue(NewJob {
            unique: unique(),
            ..NewJob::new("mover", json!({}))
        })
        .await
        .unwrap();
    assert!(matches!(second, faultline::Enqueued::Created(_)));
    match store.retry(first).await {
        Err(StoreError::UniqueKeyHeld { id }) => assert_eq!(id, first),
        other => panic!("expected UniqueKeyHeld, got {other:?}"),
    }
    assert_eq!(store.get(first).await.unwrap().state, JobState::Cancelled);
    let live: i64 =
        sqlx::query_scalar("select count(*) from faultline.jobs where unique_key = 'one-refresh'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(live, 1);
    // Once the holder has finished, the retry goes through, key and all.
    store.cancel(second.job().id).await.unwrap();
    let retried = store.retry(first).await.unwrap();
    assert_eq!(retried.unique_key.as_deref(), Some("one-refresh"));
}

/// docs/http-api.md: an error answer means nothing was written; a write that committed is answered as a
/// success — even when it outlasts `--request-timeout` (here 1 ms, shorter than any write).
#[tokio::test]
async fn a_write_is_never_answered_with_an_error_after_it_committed() {
    use axum::http::{Method, StatusCode};
    use faultline::http::ApiConfig;
    let db = TestDb::new().await;
    let store = db.store();
    let parent = store
        .enqueue(NewJob::new("noop", json!({})).with_queue("slow-cancel"))
        .await
        .unwrap()
        .into_job()
        .id;
    let children: Vec<NewJob> = (0..1000)
        .map(|_| NewJob {
            depends_on: vec![Dependency::Job(parent)],
            ..NewJob::new("noop", json!({})).with_queue("slow-cancel")
        })
        .collect();
    store.enqueue_batch(children).await.unwrap();
    let (router, _) = crate::harness::http::router(
        &db,
        ApiConfig {
            request_timeout: Duration::from_millis(1),
            ..ApiConfig::default()
        },
    );
    let (status, _, body) = crate::harness::http::call(
        &router,
        Method::POST,
        &format!("/v1/jobs/{parent}/cancel"),
        None,
        &[],
    )
    .await;
    let state = store.get(parent).await.unwrap().state;
    if status.is_success() {
        assert_eq!(state, JobState::Cancelled);
    } else {
        assert_eq!(
            state,
            JobState::Queued,
            "answered {status} {body} after the cancel committed"
        );
    }
    assert_eq!(status, StatusCode::OK, "{body}");
    // An enqueue likewise: answered 201, and the job is there.
    let (status, _, body) = crate::harness::http::call(
        &router,
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "noop", "queue": "slow-enqueue"})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id: JobId = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(store.get(id).await.unwrap().state, JobState::Queued);
}

/// The database's own moves (a dependent cancelled with its parent, in `cancel_dependents`)
/// keep every column too.
#[tokio::test]
async fn a_dependent_cancelled_with_its_parent_keeps_every_column() {
    let db = TestDb::new().await;
    let store = db.store();
    let parent = store
        .enqueue(NewJob::new("noop", json!({})).with_queue("moves-dep"))
        .await
        .unwrap()
        .into_job()
        .id;
    let child = store
        .enqueue(NewJob {
            priority: 2,
            timeout_ms: Some(1_000),
            concurrency_key: Some("k".into()),
            depends_on: vec![Dependency::Job(parent)],
            unique: Some(Unique {
                key: Some("dep-unique".into()),
                scope: UniqueScope::Period { period_ms: 60_000 },
            }),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..NewJob::new("mover", json!({"x": 1})).with_idempotency_key("dep-child")
        })
        .await
        .unwrap()
        .into_job()
        .id;
    let before = fixed_columns(&db, child).await;
    store.cancel(parent).await.unwrap();
    let after = store.get(child).await.unwrap();
    assert_eq!(after.state, JobState::Cancelled);
    assert_eq!(fixed_columns(&db, child).await, before);
}
