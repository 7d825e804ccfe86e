//! Prefetch (docs/operations.md): jobs claimed ahead of free slots hold leases like running ones — renewed
//! while they wait, handed back at once on shutdown without spending an attempt, and taken back
//! by the reaper within one lease TTL when the worker vanishes.

use std::time::Duration;

use faultline::worker::{HandlerRegistry, JobContext, JobError, WorkerConfig};
use faultline::{JobId, JobState, NewJob};
use serde_json::{json, Value};

use crate::harness::worker::{config, wait_for_state, Running};
use crate::harness::{wait_for, TestDb};

/// A handler that sleeps `ms` (stopping early when told to).
fn sleeper() -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    registry.register_fn("nap", |ctx: JobContext, payload: Value| async move {
        let ms = payload["ms"].as_u64().unwrap_or(0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
            _ = ctx.cancelled() => Err(JobError::retryable("stopped")),
        }
    });
    registry
}

fn prefetching(id: &str, ttl: Duration) -> WorkerConfig {
    WorkerConfig {
        concurrency: 1,
        prefetch: 3,
        lease_ttl: ttl,
        ..config(id)
    }
}

async fn running(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from faultline.jobs where state = 'running'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn enqueue_naps(db: &TestDb, n: usize, ms: u64) -> Vec<JobId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            db.store()
                .enqueue(NewJob::new("nap", json!({ "ms": ms })))
                .await
                .unwrap()
                .job()
                .id,
        );
    }
    ids
}

#[tokio::test]
async fn prefetched_jobs_keep_renewed_leases_while_they_wait_and_all_run_once() {
    let db = TestDb::new().await;
    let store = db.store();
    let ttl = Duration::from_millis(900);
    let ids = enqueue_naps(&db, 4, 700).await;
    let worker = Running::start(&store, sleeper(), prefetching("prefetch-renew", ttl));
    // One runs, three wait in the buffer: all four are leased by this worker.
    wait_for("four leases held", Duration::from_secs(10), || async {
        (running(&db).await == 4).then_some(())
    })
    .await;
    // The last one waits ~2.1 s, more than twice the TTL: renewed all along, never reaped.
    for id in &ids {
        let job = wait_for_state(&store, *id, JobState::Succeeded, Duration::from_secs(20)).await;
        assert_eq!(job.attempts, 1, "run once, no attempt lost: {job:?}");
        assert!(
            job.errors.is_empty(),
            "no lease expired while buffered: {job:?}"
        );
    }
    assert_eq!(worker.count("faultline_lease_expirations_total"), 0.0);
    worker.stop().await;
}

#[tokio::test]
async fn shutdown_hands_prefetched_jobs_back_at_once_without_spending_an_attempt() {
    let db = TestDb::new().await;
    let store = db.store();
    let ids = enqueue_naps(&db, 4, 60_000).await;
    let worker = Running::start(
        &store,
        sleeper(),
        WorkerConfig {
            shutdown_grace: Duration::from_millis(200),
            ..prefetching("prefetch-shutdown", Duration::from_secs(30))
        },
    );
    wait_for("four leases held", Duration::from_secs(10), || async {
        (running(&db).await == 4).then_some(())
    })
    .await;
    worker.stop().await;
    for id in ids {
        let job = store.get(id).await.unwrap();
        assert_eq!(job.state, JobState::Queued, "{job:?}");
        assert_eq!(job.attempts, 0, "handed back, attempt not counted: {job:?}");
        assert!(job.next_run_at <= chrono::Utc::now(), "eligible at once");
    }
}

#[tokio::test]
async fn a_vanished_prefetching_worker_costs_its_buffered_jobs_one_lease_ttl() {
    let db = TestDb::new().await;
    let store = db.store();
    let ttl = Duration::from_millis(800);
    let ids = enqueue_naps(&db, 4, 60_000).await;
    // The worker runs on a runtime of its own, which is then dropped: its tasks vanish, with no
    // release and no further heartbeat, as in a crash.
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let doomed = store.clone();
    let crashed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut cfg = prefetching("prefetch-crash", ttl);
            cfg.maintainer = None;
            let worker = faultline::worker::Worker::new(doomed, sleeper(), cfg).unwrap();
            tokio::spawn(worker.run(tokio_util::sync::CancellationToken::new()));
            let _ = die_rx.await;
        });
        runtime.shutdown_background();
    });
    wait_for("four leases held", Duration::from_secs(10), || async {
        (running(&db).await == 4).then_some(())
    })
    .await;
    die_tx.send(()).unwrap();
    crashed.join().unwrap();
    let rescuer = Running::start(
        &store,
        sleeper(),
        WorkerConfig {
            concurrency: 4,
            ..config("rescuer")
        },
    );
    for id in &ids {
        wait_for(
            "the job to be taken back and claimed again",
            Duration::from_secs(20),
            || async {
                let job = store.get(*id).await.ok()?;
                (job.lease_owner.as_deref() == Some("rescuer")).then_some(())
            },
        )
        .await;
    }
    rescuer.stop().await;
}
