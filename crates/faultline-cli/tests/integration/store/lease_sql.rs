//! docs/library.md fencing in SQL: `faultline.lease_is_current(job, token)` answers right before,
//! during and after a lease, after a takeover and after a cancel; `faultline.assert_lease(job,
//! token)` raises SQLSTATE FL001 for a stale token, also from inside an application's own
//! trigger, and holds the job against the reaper while the caller's transaction lasts.

use std::time::Duration;

use faultline::{JobId, NewJob};
use serde_json::json;

use crate::harness::{claim_one, TestDb};

async fn current(db: &TestDb, id: JobId, token: i64) -> bool {
    sqlx::query_scalar("select faultline.lease_is_current($1, $2)")
        .bind(id)
        .bind(token)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The SQLSTATE of a database error, if the call failed with one.
fn sqlstate<T>(result: Result<T, sqlx::Error>) -> Option<String> {
    match result {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn lease_is_current_before_during_after_a_takeover_and_after_cancel() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    assert!(!current(&db, id, 1).await, "queued: no lease is current");
    let first = claim_one(&store, "a", Duration::from_millis(200))
        .await
        .lease;
    assert!(current(&db, id, first.token).await, "during the lease");
    assert!(!current(&db, id, first.token + 1).await, "another token");
    // Expired (not yet reaped): no longer current.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while current(&db, id, first.token).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Taken back and claimed by b: only b's token is current.
    assert_eq!(store.reap_expired(10).await.unwrap().total(), 1);
    let second = claim_one(&store, "b", Duration::from_secs(30)).await.lease;
    assert!(second.token > first.token);
    assert!(!current(&db, id, first.token).await);
    assert!(current(&db, id, second.token).await);
    store.cancel(id).await.unwrap();
    assert!(!current(&db, id, second.token).await, "after cancel");
    // And after a completion.
    let done = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    let lease = claim_one(&store, "c", Duration::from_secs(30)).await.lease;
    store.complete(&lease).await.unwrap();
    assert!(!current(&db, done, lease.token).await, "after success");
    assert!(!current(&db, JobId::new(), 1).await, "an unknown job");
}

#[tokio::test]
async fn assert_lease_refuses_a_stale_token_in_an_applications_trigger() {
    let db = TestDb::new().await;
    let store = db.store();
    // The classic fencing-token store, as README shows it: each row remembers the token of
    // its last writer, and a trigger refuses a write under a lease that is not current.
    sqlx::raw_sql(
        "create table app_credits (account text primary key, amount int not null,
                                   job_id uuid not null, token bigint not null);
         create function app_credits_fenced() returns trigger language plpgsql as $$
         begin
             perform faultline.assert_lease(new.job_id, new.token);
             return new;
         end $$;
         create trigger app_credits_fenced before insert or update on app_credits
             for each row execute function app_credits_fenced();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let id = store
        .enqueue(NewJob::new("credit", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    let lease = claim_one(&store, "a", Duration::from_secs(30)).await.lease;
    let write = |token: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "insert into app_credits values ('acct-1', 10, $1, $2)
                 on conflict (account) do update set amount = app_credits.amount + 10,
                     job_id = excluded.job_id, token = excluded.token",
            )
            .bind(id)
            .bind(token)
            .execute(&pool)
            .await
        }
    };
    assert_eq!(
        sqlstate(write(lease.token - 1).await).as_deref(),
        Some("FL001")
    );
    write(lease.token).await.unwrap();
    store.complete(&lease).await.unwrap();
    // The job is done: its own (once current) token is refused too.
    assert_eq!(sqlstate(write(lease.token).await).as_deref(), Some("FL001"));
    let amount: i32 = sqlx::query_scalar("select amount from app_credits")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(amount, 10, "exactly one write got through");
}

#[tokio::test]
async fn assert_lease_holds_the_job_against_the_reaper_until_the_transaction_ends() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    let lease = claim_one(&store, "a", Duration::from_millis(300))
        .await
        .lease;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("select faultline.assert_lease($1, $2)")
        .bind(id)
        .bind(lease.token)
        .execute(&mut *tx)
        .await
        .unwrap();
    // The lease runs out while the transaction is open: the reaper passes over the held row
    // (it skips locked rows) and takes it back only once the transaction ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let expired: bool = sqlx::query_scalar(
            "select lease_expires_at < clock_timestamp() from faultline.jobs where id = $1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if expired {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.reap_expired(10).await.unwrap().total(),
        0,
        "held by assert_lease"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        store.reap_expired(10).await.unwrap().total(),
        1,
        "taken back after commit"
    );
}
