//! Lanes and low-water marks (issue 29): a claim starts at its lane's mark, and a mark never
//! hides a job — not one enqueued by a transaction that started long before the mark and
//! commits after it, nor a retried, released or promoted one.

use std::time::Duration;

use faultline::{Dependency, JobState, NewJob, Store};
use serde_json::json;

use crate::harness::TestDb;

async fn newest_mark(db: &TestDb, queue: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar(
        "select low from faultline.lane_marks where queue = $1 order by id desc limit 1",
    )
    .bind(queue)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

async fn claim(store: &Store, queue: &str) -> Vec<faultline::Claimed> {
    store
        .claim_batch(&[queue.to_owned()], "lanes", 10, Duration::from_secs(30))
        .await
        .unwrap()
}

/// Finish `n` jobs of `queue` (enqueue, claim, complete), marking the lanes after each.
async fn churn(store: &Store, queue: &str, n: usize) {
    for i in 0..n {
        store
            .enqueue(NewJob::new("noop", json!({"i": i})).with_queue(queue))
            .await
            .unwrap();
        for claimed in claim(store, queue).await {
            store.complete(&claimed.lease).await.unwrap();
        }
        store.mark_lanes().await.unwrap();
    }
}

#[tokio::test]
async fn a_mark_never_hides_a_job_whose_enqueue_committed_after_it() {
    let db = TestDb::new().await;
    let store = db.store();
    churn(&store, "lanes", 3).await;
    let first = newest_mark(&db, "lanes").await.expect("a mark");

    // A producer's transaction enqueues a job, then stays open while the queue churns on and
    // the marks move.
    let mut tx = db.pool.begin().await.unwrap();
    let late = store
        .enqueue_in(
            &mut tx,
            NewJob::new("noop", json!({"late": true})).with_queue("lanes"),
        )
        .await
        .unwrap()
        .into_job();
    churn(&store, "lanes", 5).await;
    let held = newest_mark(&db, "lanes").await.unwrap();
    let entered: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select eligible_at from faultline.jobs where id = $1")
            .bind(late.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert!(
        held <= entered,
        "the mark {held} passed the open transaction's job, in its lane at {entered}"
    );
    tx.commit().await.unwrap();
    let claimed = claim(&store, "lanes").await;
    assert_eq!(claimed.len(), 1, "the late job was not claimed");
    assert_eq!(claimed[0].job.id, late.id);
    store.complete(&claimed[0].lease).await.unwrap();

    // With the producer gone, the mark moves past what finished (marks stay a second behind
    // the clock).
    let moved =
        crate::harness::wait_for("the mark to move on", Duration::from_secs(20), || async {
            churn(&store, "lanes", 1).await;
            newest_mark(&db, "lanes")
                .await
                .filter(|m| *m > entered && *m > first)
        })
        .await;
    assert!(moved > entered);
}

#[tokio::test]
async fn retried_released_reaped_and_promoted_jobs_are_claimed_past_the_marks() {
    let db = TestDb::new().await;
    let store = db.store();
    churn(&store, "lanes2", 3).await;
    let parent = store
        .enqueue(NewJob::new("noop", json!({})).with_queue("lanes2-parent"))
        .await
        .unwrap()
        .into_job()
        .id;
    let child = store
        .enqueue(NewJob {
            depends_on: vec![Dependency::Job(parent)],
            ..NewJob::new("noop", json!({"child": true})).with_queue("lanes2")
        })
        .await
        .unwrap()
        .into_job()
        .id;
    let job = store
        .enqueue(NewJob::new("noop", json!({"x": 1})).with_queue("lanes2"))
        .await
        .unwrap()
        .into_job()
        .id;
    // Released: back in the lane, past every mark.
    let claimed = claim(&store, "lanes2").await;
    assert_eq!(claimed.len(), 1);
    churn(&store, "lanes2-other", 1).await;
    store.mark_lanes().await.unwrap();
    store.release(&claimed[0].lease).await.unwrap();
    store.mark_lanes().await.unwrap();
    let claimed = claim(&store, "lanes2").await;
    assert_eq!(claimed.len(), 1, "released job hidden");
    // Failed with retry (backoff 0 is not possible: made due), then cancelled and retried.
    store
        .fail_attempt(&claimed[0].lease, "again", true)
        .await
        .unwrap();
    store.mark_lanes().await.unwrap();
    faultline::testing::make_due(&store, &["lanes2"])
        .await
        .unwrap();
    store.mark_lanes().await.unwrap();
    let claimed = claim(&store, "lanes2").await;
    assert_eq!(claimed.len(), 1, "retried job hidden");
    store.cancel(job).await.unwrap();
    store.mark_lanes().await.unwrap();
    store.retry(job).await.unwrap();
    store.mark_lanes().await.unwrap();
    let claimed = claim(&store, "lanes2").await;
    assert_eq!(claimed.len(), 1, "job retried from history hidden");
    store.complete(&claimed[0].lease).await.unwrap();
    // Promoted when its parent succeeds.
    let lease = claim(&store, "lanes2-parent").await.pop().unwrap().lease;
    store.mark_lanes().await.unwrap();
    store.complete(&lease).await.unwrap();
    store.mark_lanes().await.unwrap();
    let claimed = claim(&store, "lanes2").await;
    assert_eq!(claimed.len(), 1, "promoted job hidden");
    assert_eq!(claimed[0].job.id, child);
    store.complete(&claimed[0].lease).await.unwrap();
    assert_eq!(store.get(child).await.unwrap().state, JobState::Succeeded);
}

#[tokio::test]
async fn old_marks_are_forgotten_but_the_newest_kept() {
    let db = TestDb::new().await;
    let store = db.store();
    churn(&store, "lanes3", 15).await;
    let before: i64 = sqlx::query_scalar("select count(*) from faultline.lane_marks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let newest = newest_mark(&db, "lanes3").await;
    let forgotten = store.forget_old_marks().await.unwrap();
    assert!(
        forgotten > 0 && before - forgotten as i64 >= 1,
        "{before} {forgotten}"
    );
    assert_eq!(newest_mark(&db, "lanes3").await, newest);
}

#[tokio::test]
async fn ready_names_autovacuum_switched_off_for_the_live_table() {
    use axum::http::Method;
    let db = TestDb::new().await;
    let (router, _) = crate::harness::http::router(&db, faultline::http::ApiConfig::default());
    sqlx::query("alter table faultline.jobs set (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, _, body) =
        crate::harness::http::call(&router, Method::GET, "/ready", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    let warnings = body["warnings"].as_array().expect("warnings");
    assert!(
        warnings[0].as_str().unwrap().contains("autovacuum"),
        "{body}"
    );
}

/// Writers that know nothing of lanes (an operator's SQL, a process of an earlier release
/// during an upgrade) are placed in their lane by the database itself.
#[tokio::test]
async fn rows_queued_by_hand_or_by_an_older_release_are_never_hidden() {
    let db = TestDb::new().await;
    let store = db.store();
    churn(&store, "lanes4", 2).await;
    // A hand-written insert in a transaction left open while the marks move on.
    let mut tx = db.pool.begin().await.unwrap();
    let by_hand = uuid::Uuid::now_v7();
    sqlx::query("insert into faultline.jobs (id, kind, queue) values ($1, 'noop', 'lanes4')")
        .bind(by_hand)
        .execute(&mut *tx)
        .await
        .unwrap();
    let inserted: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Marks computed well after the insert (they stay a second behind the clock; without the
    // lane's lock, taken for the row by the database, they would pass it): churn and mark until
    // the database's clock is two seconds past the insert.
    crate::harness::wait_for(
        "the clock 2 s past the insert",
        Duration::from_secs(20),
        || {
            let (db, store) = (&db, &store);
            async move {
                churn(store, "lanes4", 1).await;
                let past: bool =
                    sqlx::query_scalar("select clock_timestamp() > $1 + interval '2 seconds'")
                        .bind(inserted)
                        .fetch_one(&db.pool)
                        .await
                        .unwrap();
                past.then_some(())
            }
        },
    )
    .await;
    tx.commit().await.unwrap();
    let claimed = claim(&store, "lanes4").await;
    assert_eq!(claimed.len(), 1, "the hand-inserted job was hidden");
    assert_eq!(claimed[0].job.id.0, by_hand);
    // An older release's release: back to queued, `eligible_at` untouched, after the marks
    // have passed it.
    let lease = claimed[0].lease.clone();
    crate::harness::wait_for("the marks to pass the job", Duration::from_secs(20), || {
        let (db, store) = (&db, &store);
        async move {
            churn(store, "lanes4", 1).await;
            let mark = newest_mark(db, "lanes4").await?;
            let entered: chrono::DateTime<chrono::Utc> =
                sqlx::query_scalar("select eligible_at from faultline.jobs where id = $1")
                    .bind(by_hand)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (mark > entered).then_some(())
        }
    })
    .await;
    sqlx::query(
        "update faultline.jobs set state = 'queued', attempts = attempts - 1,
             next_run_at = now(), lease_expires_at = null, updated_at = now()
         where id = $1 and lease_token = $2",
    )
    .bind(by_hand)
    .bind(lease.token)
    .execute(&db.pool)
    .await
    .unwrap();
    store.mark_lanes().await.unwrap();
    let claimed = claim(&store, "lanes4").await;
    assert_eq!(
        claimed.len(),
        1,
        "the job an older release put back was hidden"
    );
}

#[tokio::test]
async fn a_limited_queue_claims_from_its_marks_within_its_limit() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .update_queue_settings(
            "lim",
            &faultline::store::QueueSettingsPatch {
                concurrency_limit: Some(Some(2)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    churn(&store, "lim", 3).await;
    let first = newest_mark(&db, "lim").await.expect("a mark");
    // A job enqueued by a transaction that stays open while the marks move on.
    let mut tx = db.pool.begin().await.unwrap();
    let late = store
        .enqueue_in(
            &mut tx,
            NewJob::new("noop", json!({"late": true})).with_queue("lim"),
        )
        .await
        .unwrap()
        .into_job();
    churn(&store, "lim", 3).await;
    assert!(newest_mark(&db, "lim").await.unwrap() >= first);
    tx.commit().await.unwrap();
    for i in 0..3 {
        store
            .enqueue(NewJob::new("noop", json!({"i": i})).with_queue("lim"))
            .await
            .unwrap();
    }
    store.mark_lanes().await.unwrap();
    // The limit holds (two running at most, counted from the live counts) and the late job,
    // first in its lane, is among the first claimed.
    let claimed = claim(&store, "lim").await;
    assert_eq!(claimed.len(), 2, "the concurrency limit of 2");
    assert_eq!(
        claimed[0].job.id, late.id,
        "the late job is not hidden by the marks"
    );
    assert!(claim(&store, "lim").await.is_empty(), "the limit is full");
    store.complete(&claimed[0].lease).await.unwrap();
    store.fold_live_counts().await.unwrap();
    let more = claim(&store, "lim").await;
    assert_eq!(more.len(), 1, "one slot freed");
    store.complete(&claimed[1].lease).await.unwrap();
    store.complete(&more[0].lease).await.unwrap();
    let rest = claim(&store, "lim").await;
    assert_eq!(rest.len(), 1, "the last job");
}

#[tokio::test]
async fn sessions_that_only_hold_the_horizon_do_not_hold_the_marks_back() {
    let db = TestDb::new().await;
    let store = db.store();
    churn(&store, "pinned", 2).await;
    // An idle transaction with an xid, and a REPEATABLE READ reader of the live table: both
    // hold the MVCC horizon, neither holds a writer's lock on the table.
    let mut idle = db.pool.begin().await.unwrap();
    let pinned_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select now() from (select txid_current()) x")
            .fetch_one(&mut *idle)
            .await
            .unwrap();
    let mut reader = db.pool.begin().await.unwrap();
    sqlx::query("set transaction isolation level repeatable read")
        .execute(&mut *reader)
        .await
        .unwrap();
    sqlx::query("select count(*) from faultline.jobs")
        .execute(&mut *reader)
        .await
        .unwrap();
    let moved = crate::harness::wait_for(
        "the mark to pass the pin",
        Duration::from_secs(20),
        || async {
            churn(&store, "pinned", 1).await;
            newest_mark(&db, "pinned").await.filter(|m| *m > pinned_at)
        },
    )
    .await;
    assert!(moved > pinned_at);
    reader.rollback().await.unwrap();
    idle.rollback().await.unwrap();
}

/// The backstop: a mark that passed a queued job (what a marker pass straddling a backward
/// step of the server's clock would append) hides it from every claim until `repair_marks`
/// sets the lane back to it; a lane whose marks are sound is left alone.
#[tokio::test]
async fn a_mark_that_passed_a_queued_job_is_set_back_by_the_repair() {
    let db = TestDb::new().await;
    let store = db.store();
    churn(&store, "strand", 3).await;
    churn(&store, "sound", 3).await;
    store.mark_lanes().await.unwrap();
    assert_eq!(
        store.repair_marks().await.unwrap(),
        0,
        "sound marks are left alone"
    );

    let stranded = store
        .enqueue(NewJob::new("k", json!({})).with_queue("strand"))
        .await
        .unwrap()
        .into_job()
        .id;
    sqlx::query(
        "insert into faultline.lane_marks (queue, priority, low)
         values ('strand', 0, clock_timestamp() + interval '1 hour')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(
        claim(&store, "strand").await.is_empty(),
        "the mark hides the job"
    );
    store.mark_lanes().await.unwrap();
    assert!(
        claim(&store, "strand").await.is_empty(),
        "and the marker does not see it"
    );

    assert_eq!(store.repair_marks().await.unwrap(), 1);
    let claimed = claim(&store, "strand").await;
    assert_eq!(
        claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [stranded]
    );
    assert_eq!(store.repair_marks().await.unwrap(), 0);
}
