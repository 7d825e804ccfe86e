//! docs/operations.md per-key concurrency: at most `key_concurrency` running jobs per key, all workers
//! together; a key's slot is held by the running job's lease and freed only when the job leaves
//! `running` — so a stalled (SIGSTOPped) or dead (SIGKILLed) worker's slot passes to the next job
//! of its key only after the reaper took the job back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use faultline::store::QueueSettingsPatch;
use faultline::worker::{ExecutionHook, HookFuture, JobContext, RunEnd, Worker, WorkerConfig};
use faultline::{JobId, NewJob};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::procs::Proc;
use crate::harness::worker::{builtins, config, enqueue};
use crate::harness::{wait_for, TestDb};

/// Every handler run per key: (start, end) on this process's clock, keyed by job id.
#[derive(Default)]
struct KeyJournal(Mutex<HashMap<String, Vec<Run>>>);

/// A job's run: its id, start and (once over) end.
type Run = (JobId, Instant, Option<Instant>);

struct Hook(Arc<KeyJournal>);

impl ExecutionHook for Hook {
    fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a> {
        Box::pin(async move {
            let key = ctx.concurrency_key.clone().unwrap_or_default();
            let mut runs = self.0 .0.lock().unwrap();
            runs.entry(key)
                .or_default()
                .push((ctx.job_id, Instant::now(), None));
        })
    }

    fn finished<'a>(&'a self, ctx: &'a JobContext, _: &'a RunEnd) -> HookFuture<'a> {
        Box::pin(async move {
            let key = ctx.concurrency_key.clone().unwrap_or_default();
            let mut runs = self.0 .0.lock().unwrap();
            if let Some(run) = runs
                .get_mut(&key)
                .and_then(|r| r.iter_mut().find(|r| r.0 == ctx.job_id && r.2.is_none()))
            {
                run.2 = Some(Instant::now());
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_jobs_over_four_keys_never_run_two_of_one_key_at_once() {
    let db = TestDb::new().await;
    let queue = "keyed";
    for i in 0..40 {
        let job = NewJob::new("sleep", json!({"ms": 60}))
            .with_queue(queue)
            .with_concurrency_key(format!("k{}", i % 4));
        enqueue(&db.store(), job).await;
    }
    let journal = Arc::new(KeyJournal::default());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let cfg = WorkerConfig {
                queues: vec![queue.to_owned()],
                concurrency: 16,
                poll_interval: Duration::from_millis(50),
                ..config(&format!("w{i}"))
            };
            let worker = Worker::new(db.store(), builtins(), cfg)
                .unwrap()
                .with_hook(Arc::new(Hook(journal.clone())));
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect();
    // Sampled from the database while they run: never two running jobs of one key.
    let mut most = 0i64;
    let mut most_running = 0i64;
    loop {
        let per_key: Option<i64> = sqlx::query_scalar(
            "select max(n) from (select count(*) as n from faultline.jobs
             where queue = 'keyed' and state = 'running' group by concurrency_key) k",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let running: i64 = sqlx::query_scalar(
            "select count(*) from faultline.jobs where queue = 'keyed' and state = 'running'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        most = most.max(per_key.unwrap_or(0));
        most_running = most_running.max(running);
        let done: i64 = sqlx::query_scalar(
            "select count(*) from faultline.job_history
             where queue = 'keyed' and state = 'succeeded'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if done == 40 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the keyed jobs did not finish"
        );
        // Sampling, not waiting: the loop ends on the condition above.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(most, 1, "two running jobs of one key seen in the database");
    assert!(
        most_running <= 4,
        "more keys running than exist: {most_running}"
    );
    let runs = journal.0.lock().unwrap();
    assert_eq!(runs.len(), 4);
    for (key, intervals) in runs.iter() {
        assert_eq!(intervals.len(), 10, "key {key}: {} runs", intervals.len());
        let mut sorted: Vec<(Instant, Instant)> = intervals
            .iter()
            .map(|(_, start, end)| (*start, end.expect("every run finished")))
            .collect();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "key {key}: a run started {:?} before the previous one ended",
                pair[0].1 - pair[1].0
            );
        }
    }
    // Four keys side by side: ten 60 ms jobs per key take at least 0.6 s; serialised across
    // keys they would take 2.4 s.
    assert!(
        elapsed < Duration::from_millis(2400),
        "the four keys did not run side by side: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_concurrency_two_runs_two_of_a_key_and_jobs_without_a_key_are_not_held() {
    let db = TestDb::new().await;
    let queue = "keyed2";
    db.store()
        .update_queue_settings(
            queue,
            &QueueSettingsPatch {
                key_concurrency: Some(Some(2)),
                ..QueueSettingsPatch::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..6 {
        let job = NewJob::new("sleep", json!({"ms": 60_000}))
            .with_queue(queue)
            .with_concurrency_key("only");
        enqueue(&db.store(), job).await;
    }
    for _ in 0..3 {
        enqueue(
            &db.store(),
            NewJob::new("sleep", json!({"ms": 60_000})).with_queue(queue),
        )
        .await;
    }
    let ttl = Duration::from_secs(30);
    let queues = vec![queue.to_owned()];
    let first = db.store().claim_batch(&queues, "a", 16, ttl).await.unwrap();
    let second = db.store().claim_batch(&queues, "b", 16, ttl).await.unwrap();
    let keyed = |batch: &[faultline::Claimed]| {
        batch
            .iter()
            .filter(|c| c.job.concurrency_key.is_some())
            .count()
    };
    assert_eq!(keyed(&first) + keyed(&second), 2, "two of the key, no more");
    assert_eq!(
        first.len() + second.len(),
        5,
        "the three jobs without a key are claimed beside them"
    );
    let outcome = db
        .store()
        .claim_with_throttles(&queues, "c", 16, ttl)
        .await
        .unwrap();
    assert!(outcome.claimed.is_empty());
    assert_eq!(
        outcome.throttled,
        vec![(queue.to_owned(), faultline::Throttle::Key)]
    );
    // Finishing one of the key frees exactly one slot.
    let done = first
        .iter()
        .chain(&second)
        .find(|c| c.job.concurrency_key.is_some())
        .unwrap();
    db.store().complete(&done.lease).await.unwrap();
    let next = db.store().claim_batch(&queues, "c", 16, ttl).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job.concurrency_key.as_deref(), Some("only"));
}

/// The job of `key` running now, with its lease expiry.
async fn running_of_key(db: &TestDb, key: &str) -> Vec<(JobId, String, DateTime<Utc>)> {
    sqlx::query_as(
        "select id, lease_owner, lease_expires_at from faultline.jobs
         where concurrency_key = $1 and state = 'running'",
    )
    .bind(key)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// When the reaper took `id`'s first attempt back (its history entry for the expired lease).
async fn reaped_at(db: &TestDb, id: JobId) -> Option<DateTime<Utc>> {
    let at: Option<String> = sqlx::query_scalar(
        "select e->>'at' from faultline.all_jobs, jsonb_array_elements(errors) e
         where id = $1 and e->>'reason' = 'lease_expired' and (e->>'attempt')::int = 1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .flatten();
    at.map(|t| t.parse::<DateTime<Utc>>().unwrap())
}

/// Two worker processes on a keyed queue: `first` takes the long job of key `k`, then `second`
/// starts; `stall` stops or kills `first`. No other job of `k` may start until the reaper has
/// taken the long job back (its lease expired; with one attempt it fails for good, so it does
/// not take the slot again), and then the next ones do.
async fn key_slot_outlives_a_stalled_holder(stall: Signal) {
    let db = TestDb::new().await;
    let queue = "held";
    let long = enqueue(
        &db.store(),
        NewJob::new("sleep", json!({"ms": 600_000}))
            .with_queue(queue)
            .with_priority(-1)
            .with_max_attempts(1)
            .with_concurrency_key("k"),
    )
    .await;
    for _ in 0..3 {
        enqueue(
            &db.store(),
            NewJob::new("sleep", json!({"ms": 10}))
                .with_queue(queue)
                .with_concurrency_key("k"),
        )
        .await;
    }
    let flags = [
        "--queues",
        queue,
        "--concurrency",
        "8",
        "--lease-ttl",
        "2s",
        "--leader-ttl",
        "2s",
        "--reaper-interval",
        "200ms",
    ];
    let first = Proc::worker(&db.url, "first", &flags);
    let held = wait_for(
        "the long job to run on first",
        Duration::from_secs(30),
        || async {
            let running = running_of_key(&db, "k").await;
            running
                .into_iter()
                .find(|(id, owner, _)| *id == long && owner == "first")
        },
    )
    .await;
    let second = Proc::worker(&db.url, "second", &flags);
    wait_for("second to be up", Duration::from_secs(30), || async {
        second
            .metric("faultline_db_up")
            .await
            .filter(|up| *up == 1.0)
    })
    .await;
    first.signal(stall);
    let stalled_at = Utc::now();
    // While the long job's lease may be live, the key's one slot stays with it.
    let recovered = wait_for(
        "the reaper to take the long job back",
        Duration::from_secs(30),
        || async {
            let running = running_of_key(&db, "k").await;
            assert!(
                running.len() <= 1,
                "two jobs of one key running: {running:?}"
            );
            // Another job of the key may run only once the reaper has taken the long job back
            // (read after the running jobs: a job seen running started before this read). The
            // reaper may do so between two polls, so "another job" alone proves nothing.
            let reaped = reaped_at(&db, long).await;
            if let Some((id, _, _)) = running.first() {
                assert!(
                    *id == long || reaped.is_some(),
                    "another job of the key started while the long job held its slot"
                );
            }
            reaped
        },
    )
    .await;
    assert!(
        recovered >= held.2,
        "taken back at {recovered} before its lease expired at {}",
        held.2
    );
    assert!(recovered > stalled_at);
    // The short jobs of the key run after that, never before.
    wait_for("the short jobs to succeed", Duration::from_secs(30), || async {
        let starts: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "select started_at from faultline.job_history
             where concurrency_key = 'k' and state = 'succeeded' and id <> $1",
        )
        .bind(long)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        for start in &starts {
            assert!(
                *start >= recovered,
                "a job of the key started at {start}, before the reaper freed the slot at {recovered}"
            );
        }
        (starts.len() == 3).then_some(())
    })
    .await;
    if stall == Signal::SIGSTOP {
        first.signal(Signal::SIGCONT);
    }
    first.kill().await;
    second.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_workers_key_slot_is_not_handed_on_before_the_reaper_takes_its_job_back() {
    key_slot_outlives_a_stalled_holder(Signal::SIGSTOP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_key_slot_passes_to_the_next_job_after_the_reaper() {
    key_slot_outlives_a_stalled_holder(Signal::SIGKILL).await;
}
