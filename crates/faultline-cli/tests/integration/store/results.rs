//! docs/library.md results: a handler's JSON result is kept with the job exactly as returned, in
//! history, over HTTP; a result over the limit fails the attempt instead of being truncated.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use faultline::http::ApiConfig;
use faultline::worker::{JobContext, JobError};
use faultline::{JobState, NewJob, Store, StoreConfig, StoreError};
use serde_json::{json, Value};

use crate::harness::http::{call, router};
use crate::harness::worker::{builtins, config, wait_for_state, Running};
use crate::harness::{default_queue, fast_config, TestDb};

/// Text that `jsonb` would refuse or rewrite, and that must come back as written.
const AWKWARD: &str = r#"{"z":1,"a":12345678901234567890.125,"nul":"\u0000","nested":{"b":[1,2]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_result_is_kept_exactly_and_returned_by_get_and_http() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = builtins();
    registry.register_fn("echo", |_ctx: JobContext, _: Value| async move {
        Ok(faultline::Payload::from_json(AWKWARD).unwrap())
    });
    registry.register_fn(
        "nothing",
        |_ctx: JobContext, _: Value| async move { Ok(()) },
    );
    let worker = Running::start(&store, registry, config("results"));
    let echo = store
        .enqueue(NewJob::new("echo", json!({})))
        .await
        .unwrap()
        .into_job();
    let nothing = store
        .enqueue(NewJob::new("nothing", json!({})))
        .await
        .unwrap()
        .into_job();
    let done = wait_for_state(
        &store,
        echo.id,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(serde_json::to_string(&done.result).unwrap(), AWKWARD);
    let done = wait_for_state(
        &store,
        nothing.id,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.result, None);
    worker.stop().await;

    // Kept in history, as text.
    let stored: String =
        sqlx::query_scalar("select result::text from faultline.job_history where id = $1")
            .bind(echo.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, AWKWARD);

    // Over HTTP, byte for byte inside the job's JSON.
    let (router, _) = router(&db, ApiConfig::default());
    let (status, _, body) = crate::harness::http::send_text(
        &router,
        Method::GET,
        &format!("/v1/jobs/{}", echo.id),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(crate::harness::http::field_text(&body, "result"), AWKWARD);
    let (_, _, body) = call(
        &router,
        Method::GET,
        &format!("/v1/jobs/{}", nothing.id),
        None,
        &[],
    )
    .await;
    assert_eq!(body["result"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_fails_the_job_for_good_and_is_not_truncated() {
    let db = TestDb::new().await;
    let store = Store::with_config(
        db.pool.clone(),
        StoreConfig {
            max_result_bytes: 100,
            ..fast_config()
        },
    );
    let mut registry = builtins();
    registry.register_fn("big", |_ctx: JobContext, _: Value| async move {
        Ok::<_, JobError>(json!("x".repeat(200)))
    });
    let worker = Running::start(&store, registry, config("limit"));
    let id = store
        .enqueue(NewJob::new("big", json!({})).with_max_attempts(3))
        .await
        .unwrap()
        .into_job()
        .id;
    // Permanent: the same handler would return the same result again (a webhook delivered
    // again), so one attempt of three is spent and the job is failed.
    let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(20)).await;
    worker.stop().await;
    assert_eq!(job.attempts, 1);
    assert_eq!(job.result, None);
    let first = &job.errors[0].error;
    assert!(
        first.contains("202 bytes")
            && first.contains("at most 100")
            && first.contains("max_result_bytes"),
        "{first}"
    );

    // The store refuses it too, before writing anything.
    store.enqueue(NewJob::new("noop", json!({}))).await.unwrap();
    let claimed = store
        .claim_batch(&default_queue(), "w", 1, Duration::from_secs(30))
        .await
        .unwrap();
    let lease = &claimed[0].lease;
    match store
        .complete_with_result(lease, &json!("y".repeat(500)))
        .await
    {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "result"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.get(lease.job_id).await.unwrap().state,
        JobState::Running
    );
    store
        .complete_with_result(lease, &json!({"ok": true}))
        .await
        .unwrap();
    let job = store.get(lease.job_id).await.unwrap();
    assert_eq!(job.result.map(|r| r.to_value()), Some(json!({"ok": true})));
}

#[tokio::test]
async fn a_transactional_completion_keeps_its_result() {
    let db = TestDb::new().await;
    let store = db.store();
    store.enqueue(NewJob::new("noop", json!({}))).await.unwrap();
    let claimed = store
        .claim_batch(&default_queue(), "w", 1, Duration::from_secs(30))
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    store
        .complete_in(&mut tx, &claimed[0].lease, &json!({"rows": 3}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let job = store.get(claimed[0].job.id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result.map(|r| r.to_value()), Some(json!({"rows": 3})));
}
