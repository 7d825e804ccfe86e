//! Live counts (issue 29, item 4): `queue_stats` reads per-(queue, state) counts kept by
//! deltas that every write to the live table appends, not a count of the rows; these tests hold
//! them to the rows themselves through every move, by-hand SQL, concurrent folds and an upgrade.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline::{Dependency, NewJob, Store};
use serde_json::json;

use crate::harness::TestDb;

/// (queue, state) → count, as the rows say and as `queue_stats` says.
type Counts = BTreeMap<(String, String), i64>;

async fn counted_rows(db: &TestDb) -> Counts {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("select queue, state, count(*) from faultline.jobs group by queue, state")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(q, s, n)| ((q, s), n)).collect()
}

async fn reported(store: &Store) -> Counts {
    let mut counts = Counts::new();
    for q in store.queue_stats().await.unwrap() {
        for (state, n) in [
            ("queued", q.queued),
            ("running", q.running),
            ("waiting", q.waiting),
        ] {
            if n != 0 {
                counts.insert((q.queue.clone(), state.to_owned()), n);
            }
        }
    }
    counts
}

async fn assert_exact(db: &TestDb, store: &Store, step: &str) {
    assert_eq!(
        reported(store).await,
        counted_rows(db).await,
        "after {step}"
    );
}

async fn claim(store: &Store, queue: &str, n: u32) -> Vec<faultline::Claimed> {
    store
        .claim_batch(&[queue.to_owned()], "counts", n, Duration::from_secs(30))
        .await
        .unwrap()
}

#[tokio::test]
async fn live_counts_follow_every_move_and_every_writer() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut fold = false;
    let mut step = |what: &'static str| {
        fold = !fold;
        (what, fold)
    };
    macro_rules! check {
        ($what:expr) => {{
            let (what, fold) = step($what);
            if fold {
                store.fold_live_counts().await.unwrap();
            }
            assert_exact(&db, &store, what).await;
        }};
    }

    assert_exact(&db, &store, "nothing").await;
    let parent = store
        .enqueue(NewJob::new("k", json!(0)).with_queue("parent"))
        .await
        .unwrap()
        .into_job()
        .id;
    check!("a single enqueue");
    store
        .enqueue_batch(
            (1..=20)
                .map(|i| NewJob::new("k", json!(i)).with_queue("a"))
                .collect(),
        )
        .await
        .unwrap();
    store
        .enqueue_batch(
            (0..5)
                .map(|i| NewJob::new("k", json!(i)).with_queue("b").with_priority(-1))
                .collect(),
        )
        .await
        .unwrap();
    check!("batches");
    let child = store
        .enqueue(NewJob {
            depends_on: vec![Dependency::Job(parent)],
            ..NewJob::new("k", json!("child")).with_queue("b")
        })
        .await
        .unwrap()
        .into_job()
        .id;
    check!("a waiting dependent");
    let claimed = claim(&store, "a", 8).await;
    check!("a claim");
    store.complete(&claimed[0].lease).await.unwrap();
    store
        .fail_attempt(&claimed[1].lease, "again", true)
        .await
        .unwrap();
    store
        .fail_attempt(&claimed[2].lease, "never", false)
        .await
        .unwrap();
    store.release(&claimed[3].lease).await.unwrap();
    check!("complete, retryable and final failures, a release");
    store.cancel(claimed[4].job.id).await.unwrap();
    store.retry(claimed[4].job.id).await.unwrap();
    check!("a cancel and a retry from history");
    // The parent succeeds: its dependent is promoted to queued in the same transaction.
    for c in claimed.iter().skip(5) {
        store.complete(&c.lease).await.unwrap();
    }
    let parent_lease = claim(&store, "parent", 1)
        .await
        .pop()
        .expect("the parent is claimable")
        .lease;
    store.complete(&parent_lease).await.unwrap();
    assert_eq!(
        store.get(child).await.unwrap().state,
        faultline::JobState::Queued
    );
    check!("a dependent promoted");
    // A lease that expires is reaped back to queued.
    let short = store
        .claim_batch(&["b".into()], "counts", 2, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(short.len(), 2);
    crate::harness::wait_for("the reap", Duration::from_secs(10), || async {
        store.reap_expired(100).await.unwrap();
        (running_count(&db).await == 0).then_some(())
    })
    .await;
    check!("a reap");
    // Other writers: an operator's SQL.
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, queue, payload) values
             (gen_random_uuid(), 'k', 'by-hand', '{}'), (gen_random_uuid(), 'k', 'by-hand', '{}');
         update faultline.jobs set queue = 'by-hand-2' where queue = 'by-hand'
             and id = (select id from faultline.jobs where queue = 'by-hand' order by id limit 1);
         update faultline.jobs set lease_expires_at = lease_expires_at where state = 'running';
         delete from faultline.jobs where queue = 'b' and state = 'queued'
             and id = (select id from faultline.jobs where queue = 'b' and state = 'queued' order by id limit 1);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    check!("inserts, a move between queues, an update that moves nothing and a delete by hand");
    sqlx::raw_sql("truncate faultline.jobs cascade")
        .execute(&db.pool)
        .await
        .unwrap();
    check!("a truncate");
    store
        .enqueue(NewJob::new("k", json!({})).with_queue("a"))
        .await
        .unwrap();
    check!("an enqueue after the truncate");
}

async fn running_count(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from faultline.jobs where state = 'running'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_folds_and_writers_never_count_a_delta_twice() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut tasks = Vec::new();
    for p in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                store
                    .enqueue(NewJob::new("k", json!([p, i])).with_queue(format!("q{}", i % 3)))
                    .await
                    .unwrap();
                if i % 5 == 0 {
                    for c in claim(&store, &format!("q{}", i % 3), 2).await {
                        store.complete(&c.lease).await.unwrap();
                    }
                }
            }
        }));
    }
    for _ in 0..3 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..30 {
                store.fold_live_counts().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_exact(&db, &store, "concurrent writers and folds").await;
    store.fold_live_counts().await.unwrap();
    let unfolded: i64 = sqlx::query_scalar("select count(*) from faultline.live_count_deltas")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        unfolded, 0,
        "a fold with nothing else running folds every delta"
    );
    assert_exact(&db, &store, "a last fold").await;
}

#[tokio::test]
async fn a_transaction_that_rolls_back_counts_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut tx = db.pool.begin().await.unwrap();
    store
        .enqueue_in(&mut tx, NewJob::new("k", json!({})).with_queue("rolled"))
        .await
        .unwrap();
    // A fold while the transaction is open does not see its delta; the rollback removes it.
    store.fold_live_counts().await.unwrap();
    tx.rollback().await.unwrap();
    store.fold_live_counts().await.unwrap();
    assert_exact(&db, &store, "a rolled-back enqueue").await;
    assert!(reported(&store).await.is_empty());
}
