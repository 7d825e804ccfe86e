//! Enqueue inside the caller's own transaction: the job exists, and workers hear of it, only if
//! that transaction commits.

use std::time::Duration;

use faultline::store::JOB_CHANNEL;
use faultline::{NewJob, StoreError};
use serde_json::json;
use sqlx::postgres::PgListener;

use crate::harness::TestDb;

#[tokio::test]
async fn job_enqueued_in_a_rolled_back_transaction_does_not_exist() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(JOB_CHANNEL).await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let rolled_back = store
        .enqueue_in(
            &mut tx,
            NewJob::new("k", json!({})).with_queue("rolled-back"),
        )
        .await
        .unwrap()
        .into_job();
    // Visible inside the transaction...
    store
        .enqueue_in(
            &mut tx,
            NewJob::new("k", json!({})).with_queue("rolled-back"),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // ...and gone after the rollback.
    assert!(matches!(
        store.get(rolled_back.id).await,
        Err(StoreError::NotFound(id)) if id == rolled_back.id
    ));

    let mut tx = db.pool.begin().await.unwrap();
    let committed = store
        .enqueue_in(&mut tx, NewJob::new("k", json!({})).with_queue("committed"))
        .await
        .unwrap()
        .into_job();
    tx.commit().await.unwrap();
    assert_eq!(store.get(committed.id).await.unwrap().id, committed.id);

    let rows: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // Notifications are delivered in commit order and a rolled-back one never: the first to
    // arrive is the committed queue's.
    let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification for the committed job")
        .unwrap();
    assert_eq!(note.payload(), "committed");
}

#[tokio::test]
async fn idempotent_replay_inside_a_transaction_sees_its_own_insert() {
    let db = TestDb::new().await;
    let store = db.store();
    let job = NewJob::new("k", json!({})).with_idempotency_key("tx-key");
    let mut tx = db.pool.begin().await.unwrap();
    let first = store.enqueue_in(&mut tx, job.clone()).await.unwrap();
    let second = store.enqueue_in(&mut tx, job).await.unwrap();
    assert!(!first.was_replayed());
    assert!(second.was_replayed());
    assert_eq!(first.job().id, second.job().id);
    tx.commit().await.unwrap();
}
