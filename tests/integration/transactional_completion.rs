//! SPEC §13 transactional completion: a handler's own writes and its job's success commit in
//! one transaction, exactly once; a holder whose lease was lost is refused and rolls back.

use std::time::Duration;

use faultline::worker::{JobContext, JobError};
use faultline::{JobState, LeaseLostReason, NewJob, StoreError};
use rand::Rng;
use serde_json::json;

use crate::harness::{default_queue, TestDb};
use crate::worker::{builtins, config, wait_for_state, Running};

async fn app_table(db: &TestDb) {
    sqlx::query("create table app_rows (job_id uuid not null, token bigint not null)")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn rows_of(db: &TestDb, id: faultline::JobId) -> i64 {
    sqlx::query_scalar("select count(*) from app_rows where job_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_writes_and_completes_in_one_transaction_and_is_not_reported_twice() {
    let db = TestDb::new().await;
    app_table(&db).await;
    let store = db.store();
    let pool = db.pool.clone();
    let mut registry = builtins();
    registry.register_fn("credit", move |ctx: JobContext, _: serde_json::Value| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.map_err(JobError::retryable)?;
            sqlx::query("insert into app_rows values ($1, $2)")
                .bind(ctx.job_id)
                .bind(ctx.lease_token)
                .execute(&mut *tx)
                .await
                .map_err(JobError::retryable)?;
            ctx.complete_and_commit(tx, ())
                .await
                .map_err(JobError::retryable)?;
            Ok(())
        }
    });
    let worker = Running::start(&store, registry, config("tx"));
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            store
                .enqueue(NewJob::new("credit", json!({})))
                .await
                .unwrap()
                .job()
                .id,
        );
    }
    for id in &ids {
        let job = wait_for_state(&store, *id, JobState::Succeeded, Duration::from_secs(30)).await;
        assert_eq!(job.attempts, 1);
        assert_eq!(rows_of(&db, *id).await, 1);
    }
    let text = worker.metrics_text();
    worker.stop().await;
    assert!(
        text.contains("faultline_jobs_succeeded_total{kind=\"credit\",queue=\"default\"} 20"),
        "{text}"
    );
    assert!(
        !text.contains("faultline_stale_completions_total{queue=\"default\"} 1"),
        "the worker reported a committed job again: {text}"
    );
}

/// Many rounds, in random orders: A claims, writes in its transaction and stalls past its lease;
/// the reaper takes the job back; B claims, writes and completes in its transaction. Whichever
/// commits first, A's completion is refused with `LeaseLost`, its transaction rolls back, and
/// the application table has exactly one row per job: B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_refused_and_its_writes_roll_back_in_every_order() {
    let db = TestDb::new().await;
    app_table(&db).await;
    let store = db.store();
    let mut rng = rand::thread_rng();
    for round in 0..25 {
        let id = store
            .enqueue(NewJob::new("credit", json!({"round": round})))
            .await
            .unwrap()
            .job()
            .id;
        let ttl = Duration::from_millis(rng.gen_range(20..120));
        let a = store
            .claim_batch(&default_queue(), "a", 1, ttl)
            .await
            .unwrap()
            .remove(0)
            .lease;
        let mut tx_a = db.pool.begin().await.unwrap();
        sqlx::query("insert into app_rows values ($1, $2)")
            .bind(id)
            .bind(a.token)
            .execute(&mut *tx_a)
            .await
            .unwrap();
        // A stalls: its lease runs out and the reaper takes the job back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.reap_expired(10).await.unwrap().total() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: never reaped"
            );
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1..20))).await;
        }
        let b = store
            .claim_batch(&default_queue(), "b", 1, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0)
            .lease;
        let b_first = rng.gen_bool(0.5);
        let commit_b = || async {
            let mut tx_b = db.pool.begin().await.unwrap();
            sqlx::query("insert into app_rows values ($1, $2)")
                .bind(id)
                .bind(b.token)
                .execute(&mut *tx_b)
                .await
                .unwrap();
            store
                .complete_in(&mut tx_b, &b, &serde_json::Value::Null)
                .await
                .unwrap();
            tx_b.commit().await.unwrap();
        };
        if b_first {
            commit_b().await;
        }
        match store
            .complete_in(&mut tx_a, &a, &serde_json::Value::Null)
            .await
        {
            Err(StoreError::LeaseLost { reason, .. }) => {
                // Another lease of the job exists, live or finished: superseded either way.
                let expected = LeaseLostReason::Superseded;
                assert_eq!(reason, expected, "round {round}");
                tx_a.rollback().await.unwrap();
            }
            other => panic!("round {round}: a stale completion was accepted: {other:?}"),
        }
        if !b_first {
            commit_b().await;
        }
        assert_eq!(rows_of(&db, id).await, 1, "round {round}");
        let token: i64 = sqlx::query_scalar("select token from app_rows where job_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(token, b.token, "round {round}: the holder's row");
        let job = store.get(id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.lease_token, Some(b.token));
    }
}
