//! docs/operations.md flow control: pause, a queue's concurrency limit and its rate limit, enforced in
//! the claim across every worker (three workers, each with many free slots).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline::store::QueueSettingsPatch;
use faultline::worker::{ExecutionHook, HookFuture, JobContext, RunEnd, Worker, WorkerConfig};
use faultline::{JobState, NewJob, RateLimit, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::worker::{builtins, config, enqueue};
use crate::harness::{wait_for, TestDb};

/// Every handler run: when it started and ended (this process's clock).
#[derive(Default)]
struct Recorder(Mutex<Vec<(Instant, Option<Instant>)>>);

struct Hook(Arc<Recorder>);

impl ExecutionHook for Hook {
    fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a> {
        let _ = ctx;
        Box::pin(async move {
            let mut runs = self.0 .0.lock().unwrap();
            runs.push((Instant::now(), None));
        })
    }

    fn finished<'a>(&'a self, ctx: &'a JobContext, _: &'a RunEnd) -> HookFuture<'a> {
        let _ = ctx;
        Box::pin(async move {
            let mut runs = self.0 .0.lock().unwrap();
            // Close the earliest open run (runs of one worker are interchangeable here).
            if let Some(run) = runs.iter_mut().find(|r| r.1.is_none()) {
                run.1 = Some(Instant::now());
            }
        })
    }
}

impl Recorder {
    /// Most handler runs open at once.
    fn max_overlap(&self) -> usize {
        let runs = self.0.lock().unwrap();
        let mut edges: Vec<(Instant, i32)> = Vec::new();
        for (start, end) in runs.iter() {
            edges.push((*start, 1));
            edges.push((end.unwrap_or_else(Instant::now), -1));
        }
        // An end and a start at the same instant: the end first.
        edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let (mut open, mut most) = (0i32, 0i32);
        for (_, delta) in edges {
            open += delta;
            most = most.max(open);
        }
        most as usize
    }

    fn starts(&self) -> Vec<Instant> {
        let mut starts: Vec<Instant> = self.0.lock().unwrap().iter().map(|r| r.0).collect();
        starts.sort();
        starts
    }
}

/// Three workers of 16 slots each on `queue`, recording every run in `recorder`.
fn three_workers(
    store: &Store,
    queue: &str,
    recorder: &Arc<Recorder>,
) -> (CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
    let shutdown = CancellationToken::new();
    let handles = (0..3)
        .map(|i| {
            let cfg = WorkerConfig {
                queues: vec![queue.to_owned()],
                concurrency: 16,
                poll_interval: Duration::from_millis(50),
                ..config(&format!("w{i}"))
            };
            let worker = Worker::new(store.clone(), builtins(), cfg)
                .unwrap()
                .with_hook(Arc::new(Hook(recorder.clone())));
            tokio::spawn(worker.run(shutdown.clone()))
        })
        .collect();
    (shutdown, handles)
}

async fn stop(shutdown: CancellationToken, handles: Vec<tokio::task::JoinHandle<()>>) {
    shutdown.cancel();
    for h in handles {
        h.await.unwrap();
    }
}

async fn running(db: &TestDb, queue: &str) -> i64 {
    sqlx::query_scalar("select count(*) from faultline.jobs where queue = $1 and state = 'running'")
        .bind(queue)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn succeeded(db: &TestDb, queue: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from faultline.all_jobs where queue = $1 and state = 'succeeded'",
    )
    .bind(queue)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_three_workers_and_is_used_in_full() {
    let db = TestDb::new().await;
    let store = db.store();
    let stats = store
        .update_queue_settings(
            "limited",
            &QueueSettingsPatch {
                concurrency_limit: Some(Some(5)),
                ..QueueSettingsPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(stats.concurrency_limit, Some(5));
    let jobs: Vec<NewJob> = (0..60)
        .map(|_| NewJob::new("sleep", json!({"ms": 150})).with_queue("limited"))
        .collect();
    store.enqueue_batch(jobs).await.unwrap();

    let recorder = Arc::new(Recorder::default());
    let (shutdown, handles) = three_workers(&store, "limited", &recorder);
    let mut most_in_db = 0;
    let started = Instant::now();
    while succeeded(&db, "limited").await < 60 {
        most_in_db = most_in_db.max(running(&db, "limited").await);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the jobs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop(shutdown, handles).await;

    assert!(
        most_in_db <= 5,
        "{most_in_db} running at once in the database"
    );
    let most = recorder.max_overlap();
    assert_eq!(most, 5, "handler runs open at once (journal)");
    // 60 jobs of 150 ms through 5 slots need 1.8 s; far longer would mean the limit starves.
    eprintln!(
        "concurrency limit 5: 60 × 150 ms in {elapsed:?}, most at once {most} (db {most_in_db})"
    );
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_three_workers_in_every_window() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .update_queue_settings(
            "rated",
            &QueueSettingsPatch {
                rate_limit: Some(Some(RateLimit {
                    count: 10,
                    period_ms: 1000,
                })),
                ..QueueSettingsPatch::default()
            },
        )
        .await
        .unwrap();
    let jobs: Vec<NewJob> = (0..35)
        .map(|_| NewJob::new("noop", json!({})).with_queue("rated"))
        .collect();
    store.enqueue_batch(jobs).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let (shutdown, handles) = three_workers(&store, "rated", &recorder);
    wait_for("35 jobs done", Duration::from_secs(60), || async {
        (succeeded(&db, "rated").await == 35).then_some(())
    })
    .await;
    stop(shutdown, handles).await;

    // The starts on the database clock (`started_at` is the real time of the claim, never
    // later than the start the limiter logged).
    let starts: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "select started_at from faultline.all_jobs where queue = 'rated' order by started_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(starts.len(), 35);
    assert_eq!(recorder.starts().len(), 35, "every job ran once");
    // Every window of the period holds at most `count` starts.
    let window = chrono::Duration::milliseconds(1000);
    for (i, first) in starts.iter().enumerate() {
        let within = starts[i..]
            .iter()
            .take_while(|s| **s - *first < window)
            .count();
        assert!(
            within <= 10,
            "{within} starts within {window:?} of start {i}"
        );
    }
    // And the limit is used: 35 starts at 10/s take a little over 3 s, not far more.
    let span = (*starts.last().unwrap() - starts[0]).to_std().unwrap();
    eprintln!("rate limit 10/s: 35 starts over {span:?}");
    assert!(
        span >= Duration::from_millis(3000),
        "{span:?}: faster than the limit"
    );
    assert!(
        span < Duration::from_secs(8),
        "{span:?}: far below the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_starts_nothing_lets_running_jobs_finish_and_drains_on_resume() {
    let db = TestDb::new().await;
    let store = db.store();
    let recorder = Arc::new(Recorder::default());
    let (shutdown, handles) = three_workers(&store, "pausable", &recorder);
    let long = enqueue(
        &store,
        NewJob::new("sleep", json!({"ms": 800})).with_queue("pausable"),
    )
    .await;
    crate::harness::worker::wait_for_state(
        &store,
        long,
        JobState::Running,
        Duration::from_secs(10),
    )
    .await;

    let paused = store.pause("pausable").await.unwrap();
    assert!(paused.paused);
    // Enqueues are still accepted.
    for _ in 0..10 {
        enqueue(
            &store,
            NewJob::new("noop", json!({})).with_queue("pausable"),
        )
        .await;
    }
    // The running job finishes; nothing new starts over many poll intervals.
    crate::harness::worker::wait_for_state(
        &store,
        long,
        JobState::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(running(&db, "pausable").await, 0);
        assert_eq!(
            succeeded(&db, "pausable").await,
            1,
            "a job of a paused queue ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = store.queue_stats().await.unwrap();
    let q = listed.iter().find(|q| q.queue == "pausable").unwrap();
    assert!(q.paused && q.queued == 10);

    assert!(!store.resume("pausable").await.unwrap().paused);
    wait_for("the backlog drained", Duration::from_secs(20), || async {
        (succeeded(&db, "pausable").await == 11).then_some(())
    })
    .await;
    stop(shutdown, handles).await;
}

#[tokio::test]
async fn queues_with_only_settings_are_listed_and_null_clears_a_limit() {
    let db = TestDb::new().await;
    let store = db.store();
    let set = QueueSettingsPatch {
        concurrency_limit: Some(Some(3)),
        rate_limit: Some(Some(RateLimit {
            count: 5,
            period_ms: 2000,
        })),
        ..QueueSettingsPatch::default()
    };
    store.update_queue_settings("empty", &set).await.unwrap();
    let listed = store.queue_stats().await.unwrap();
    let q = listed.iter().find(|q| q.queue == "empty").expect("listed");
    assert_eq!((q.queued, q.concurrency_limit), (0, Some(3)));
    assert_eq!(
        q.rate_limit.map(|r| (r.count, r.period_ms)),
        Some((5, 2000))
    );
    // An absent field is kept; null clears.
    let cleared = store
        .update_queue_settings(
            "empty",
            &QueueSettingsPatch {
                concurrency_limit: Some(None),
                ..QueueSettingsPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.concurrency_limit, None);
    assert!(cleared.rate_limit.is_some());
}
