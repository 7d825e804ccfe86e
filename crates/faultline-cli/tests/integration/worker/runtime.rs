//! The worker runtime against a real Postgres: guarantees 2, 3, 4, 7, 8 and 9 end to end, with
//! in-process workers (the drills run the same scenarios as separate processes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline::worker::{
    builtin_registry, HandlerRegistry, JobContext, JobError, WebhookConfig, Worker, WorkerConfig,
};
use faultline::{db, JobId, JobState, NewJob, Store};
use faultline_pg::{Cluster, StopMode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::{fast_config, wait_for, TestDb};

use crate::harness::worker::{builtins, config, enqueue, metric_sum, wait_for_state, Running};

async fn count_in_state(pool: &sqlx::PgPool, state: &str) -> i64 {
    sqlx::query_scalar("select count(*) from faultline.all_jobs where state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_drain_3000_jobs_and_run_each_exactly_once() {
    let db = TestDb::new().await;
    let store = db.store();
    let runs: Arc<Mutex<HashMap<JobId, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..3 {
        let mut registry = builtins();
        let runs = runs.clone();
        registry.register_fn("count", move |ctx: JobContext, _: serde_json::Value| {
            let runs = runs.clone();
            async move {
                *runs.lock().unwrap().entry(ctx.job_id).or_default() += 1;
                Ok(())
            }
        });
        let mut config = config(&format!("drain-{w}"));
        config.concurrency = 16;
        workers.push(Running::start(&store, registry, config));
    }
    let jobs = (0..3000).map(|i| NewJob::new("count", json!({ "i": i })));
    store.enqueue_batch(jobs.collect()).await.unwrap();

    wait_for("3000 jobs to succeed", Duration::from_secs(120), || async {
        (count_in_state(&db.pool, "succeeded").await == 3000).then_some(())
    })
    .await;
    let mut claimed = 0.0;
    for worker in workers {
        claimed += worker.count("faultline_jobs_claimed_total");
        worker.stop().await;
    }
    {
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), 3000);
        assert!(runs.values().all(|&n| n == 1), "a job ran more than once");
    }
    assert_eq!(claimed, 3000.0);
    let max_attempts: i32 = sqlx::query_scalar("select max(attempts) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(max_attempts, 1);
}

#[tokio::test]
async fn failing_jobs_retry_with_backoff_then_succeed_or_fail_after_max_attempts() {
    let db = TestDb::new().await;
    let store = db.store(); // 40 ms backoff base
    let worker = Running::start(&store, builtins(), config("retrier"));
    let flaky = enqueue(
        &store,
        NewJob::new("fail", json!({"times": 2})).with_max_attempts(5),
    )
    .await;
    let hopeless = enqueue(
        &store,
        NewJob::new("fail", json!({"times": 99})).with_max_attempts(3),
    )
    .await;
    let unknown = enqueue(&store, NewJob::new("no-such-kind", json!({}))).await;
    let bad_payload = enqueue(&store, NewJob::new("sleep", json!({"ms": "soon"}))).await;

    let job = wait_for_state(&store, flaky, JobState::Succeeded, Duration::from_secs(20)).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.errors.len(), 2);
    let job = wait_for_state(&store, hopeless, JobState::Failed, Duration::from_secs(20)).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.errors.len(), 3);

    let job = wait_for_state(&store, unknown, JobState::Failed, Duration::from_secs(20)).await;
    assert_eq!(job.attempts, 1, "an unknown kind fails at once");
    assert!(job.last_error.unwrap().contains("no-such-kind"));
    let job = wait_for_state(
        &store,
        bad_payload,
        JobState::Failed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(job.attempts, 1);
    assert!(job
        .last_error
        .unwrap()
        .contains("invalid payload for kind \"sleep\""));

    // Counters move just after the rows commit: wait for them rather than race them.
    let counts = || {
        (
            worker.count("faultline_job_retries_total"),
            worker.count("faultline_jobs_failed_total"),
            worker.count("faultline_jobs_succeeded_total"),
        )
    };
    let settled = wait_for(
        "the counters to catch up",
        Duration::from_secs(10),
        || async { (counts() == (4.0, 3.0, 1.0)).then_some(()) },
    )
    .await;
    assert_eq!(settled, ());
    worker.stop().await;
}

#[tokio::test]
async fn long_job_keeps_its_lease_by_heartbeats_and_is_never_rescued() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut short = config("long-runner");
    short.lease_ttl = Duration::from_millis(400);
    let runner = Running::start(&store, builtins(), short.clone());
    // A second worker whose reaper is eager to rescue anything that lapses.
    short.worker_id = "rescuer".into();
    let rescuer = Running::start(&store, builtins(), short);
    let id = enqueue(&store, NewJob::new("sleep", json!({"ms": 2000}))).await; // 5 × TTL

    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(30)).await;
    assert_eq!(job.attempts, 1, "the job was taken from its live worker");
    assert!(job.errors.is_empty());
    assert_eq!(runner.count("faultline_lease_expirations_total"), 0.0);
    assert_eq!(rescuer.count("faultline_lease_expirations_total"), 0.0);
    runner.stop().await;
    rescuer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_of_a_worker_that_vanished_is_recovered_after_its_lease_expires() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = enqueue(&store, NewJob::new("hang", json!({}))).await;

    // Worker A runs on a runtime of its own, which we then drop: its tasks vanish mid-job, with
    // no release and no further heartbeat, as in a crash.
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let a_store = store.clone();
    let crashed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut registry = HandlerRegistry::new();
            registry.register_fn("hang", |_: JobContext, _: serde_json::Value| {
                std::future::pending::<Result<(), JobError>>()
            });
            let mut cfg = config("worker-a");
            cfg.lease_ttl = Duration::from_millis(600);
            cfg.maintainer = None;
            let a = Worker::new(a_store, registry, cfg).unwrap();
            tokio::spawn(a.run(CancellationToken::new()));
            let _ = die_rx.await;
        });
        runtime.shutdown_background();
    });
    let running = wait_for_state(&store, id, JobState::Running, Duration::from_secs(10)).await;
    assert_eq!(running.lease_owner.as_deref(), Some("worker-a"));
    die_tx.send(()).unwrap();
    crashed.join().unwrap();
    let killed_at = Instant::now();

    let mut registry = HandlerRegistry::new();
    registry.register_fn("hang", |_: JobContext, _: serde_json::Value| async {
        Ok(())
    });
    let b = Running::start(&store, registry, config("worker-b"));
    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
    let recovered_in = killed_at.elapsed();
    assert_eq!(job.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(job.attempts, 2);
    assert_eq!(job.errors[0].reason, "lease_expired");
    assert_eq!(job.errors[0].worker.as_deref(), Some("worker-a"));
    assert_eq!(b.count("faultline_lease_expirations_total"), 1.0);
    assert_eq!(b.count("faultline_jobs_recovered_total"), 1.0);
    eprintln!("recovered {recovered_in:?} after the crash (lease TTL 600ms)");
    b.stop().await;
}

#[tokio::test]
async fn cancelled_running_job_stops_within_a_heartbeat_and_no_late_success_is_written() {
    let db = TestDb::new().await;
    let store = db.store();
    let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut registry = HandlerRegistry::new();
    let seen_by_handler = seen.clone();
    registry.register_fn("wait", move |ctx: JobContext, _: serde_json::Value| {
        let seen = seen_by_handler.clone();
        async move {
            ctx.cancelled().await;
            *seen.lock().unwrap() = Some(Instant::now());
            Ok(()) // a "success" that must never be recorded
        }
    });
    let mut cfg = config("canceller");
    cfg.lease_ttl = Duration::from_millis(900); // heartbeat every 300 ms
    let heartbeat = cfg.heartbeat_every();
    let worker = Running::start(&store, registry, cfg);
    let id = enqueue(&store, NewJob::new("wait", json!({}))).await;
    wait_for_state(&store, id, JobState::Running, Duration::from_secs(10)).await;

    let cancelled_at = Instant::now();
    store.cancel(id).await.unwrap();
    let observed = wait_for(
        "the handler to see the cancellation",
        Duration::from_secs(10),
        || {
            let seen = seen.clone();
            async move { *seen.lock().unwrap() }
        },
    )
    .await;
    let delay = observed - cancelled_at;
    eprintln!("handler saw the cancellation after {delay:?} (heartbeat interval {heartbeat:?})");
    // One heartbeat interval, plus the statement's round trip and scheduling on a busy machine.
    assert!(delay <= heartbeat * 2, "took {delay:?}");
    let succeeded = worker.metrics.clone();
    worker.stop().await;
    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(
        metric_sum(&succeeded.render(), "faultline_jobs_succeeded_total"),
        0.0
    );
}

#[tokio::test]
async fn shutdown_hands_back_jobs_that_outlive_the_grace_period_without_spending_attempts() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_fn("hold", |ctx: JobContext, _: serde_json::Value| async move {
        ctx.cancelled().await;
        Err::<(), _>(JobError::retryable("stopped"))
    });
    let mut cfg = config("leaving");
    cfg.shutdown_grace = Duration::from_millis(200);
    let leaving = Running::start(&store, registry, cfg);
    let id = enqueue(&store, NewJob::new("hold", json!({})).with_max_attempts(1)).await;
    wait_for_state(&store, id, JobState::Running, Duration::from_secs(10)).await;

    let started = Instant::now();
    leaving.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "handed back, eligible at once");
    assert_eq!(job.attempts, 0, "the shutdown did not consume the attempt");
    assert!(job.errors.is_empty());

    let mut registry = HandlerRegistry::new();
    registry.register_fn("hold", |_: JobContext, _: serde_json::Value| async {
        Ok(())
    });
    let next = Running::start(&store, registry, config("next"));
    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(job.attempts, 1, "max_attempts = 1 and it still ran");
    assert_eq!(job.lease_owner.as_deref(), Some("next"));
    next.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_jobs_that_finish_within_the_grace_period() {
    let db = TestDb::new().await;
    let store = db.store();
    let worker = Running::start(&store, builtins(), config("patient"));
    let id = enqueue(&store, NewJob::new("sleep", json!({"ms": 300}))).await;
    wait_for_state(&store, id, JobState::Running, Duration::from_secs(10)).await;
    worker.stop().await;
    assert_eq!(store.get(id).await.unwrap().state, JobState::Succeeded);
}

#[tokio::test]
async fn handler_panic_is_recorded_and_retried_and_the_worker_keeps_running() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = builtins();
    registry.register_fn(
        "panic-once",
        |ctx: JobContext, _: serde_json::Value| async move {
            if ctx.attempt == 1 {
                panic!("boom in attempt {}", ctx.attempt);
            }
            Ok(())
        },
    );
    let worker = Running::start(&store, registry, config("panicky"));
    let id = enqueue(&store, NewJob::new("panic-once", json!({}))).await;
    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
    assert_eq!(job.attempts, 2);
    assert!(
        job.errors[0]
            .error
            .contains("handler panicked: boom in attempt 1"),
        "{:?}",
        job.errors
    );
    // Still alive: it runs the next job too.
    let next = enqueue(&store, NewJob::new("noop", json!({}))).await;
    wait_for_state(&store, next, JobState::Succeeded, Duration::from_secs(10)).await;
    worker.stop().await;
}

#[tokio::test]
async fn job_past_its_timeout_fails_the_attempt_as_timed_out() {
    let db = TestDb::new().await;
    let store = db.store();
    let worker = Running::start(&store, builtins(), config("timer"));
    let id = enqueue(
        &store,
        NewJob::new("sleep", json!({"ms": 60_000}))
            .with_timeout_ms(100)
            .with_max_attempts(1),
    )
    .await;
    let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(10)).await;
    assert_eq!(job.last_error.as_deref(), Some("timed out after 100ms"));
    worker.stop().await;
}

#[tokio::test]
async fn lost_lease_stops_the_handler_and_its_result_is_discarded_as_stale() {
    let db = TestDb::new().await;
    let store = db.store();
    let stops = Arc::new(Mutex::new(0u32));
    let mut registry = HandlerRegistry::new();
    let seen = stops.clone();
    registry.register_fn("hold-once", move |ctx: JobContext, _: serde_json::Value| {
        let seen = seen.clone();
        async move {
            if ctx.attempt == 1 {
                ctx.cancelled().await;
                *seen.lock().unwrap() += 1;
            }
            Ok(())
        }
    });
    let mut cfg = config("stale");
    cfg.lease_ttl = Duration::from_millis(900);
    cfg.maintainer = None;
    let worker = Running::start(&store, registry, cfg);
    let id = enqueue(&store, NewJob::new("hold-once", json!({}))).await;
    wait_for_state(&store, id, JobState::Running, Duration::from_secs(10)).await;

    // The lease is taken away behind the worker's back (as a reaper would after a stall). The
    // worker's heartbeat may extend it again between the two statements: then again.
    let reaped = wait_for(
        "the reaper to take the lease",
        Duration::from_secs(10),
        || async {
            sqlx::query(
                "update faultline.jobs set lease_expires_at = now() - interval '1 second'
             where id = $1 and state = 'running'",
            )
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
            let reaped = store.reap_expired(10).await.unwrap();
            (!reaped.requeued.is_empty()).then_some(reaped)
        },
    )
    .await;
    assert_eq!(reaped.requeued.len(), 1);

    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
    assert_eq!(job.attempts, 2, "the second claim ran it");
    // The first handler learns at its next heartbeat (the same worker may well have run the
    // second attempt meanwhile, under its own lease).
    wait_for(
        "the first handler to be stopped",
        Duration::from_secs(10),
        || async {
            (*stops.lock().unwrap() == 1
                && worker.count("faultline_stale_completions_total") == 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(store.get(id).await.unwrap().state, JobState::Succeeded);
    worker.stop().await;
}

#[tokio::test]
async fn idle_worker_starts_a_new_job_at_once_on_notify_well_before_the_poll_interval() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut cfg = config("listener");
    cfg.poll_interval = Duration::from_secs(30);
    let worker = Running::start(&store, builtins(), cfg);
    // Wait until the worker's LISTEN connection is up, then let a first job go through, so
    // the start-up claims are over and the worker is idle in its 30 s poll wait.
    wait_for("the worker to LISTEN", Duration::from_secs(10), || async {
        let listening: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and query ilike 'listen%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (listening > 0).then_some(())
    })
    .await;
    let first = enqueue(&store, NewJob::new("noop", json!({}))).await;
    wait_for_state(&store, first, JobState::Succeeded, Duration::from_secs(40)).await;
    let id = enqueue(&store, NewJob::new("noop", json!({}))).await;
    let job = wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
    let latency = job.started_at.unwrap() - job.created_at;
    eprintln!("enqueue → start latency on an idle worker: {latency}");
    assert!(
        latency < chrono::Duration::seconds(5),
        "took {latency}: LISTEN/NOTIFY did not wake the worker (poll interval is 30s)"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_survives_a_database_outage_and_finishes_every_job() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::temporary)
            .await
            .unwrap()
            .expect("a private cluster of this test's own"),
    );
    crate::harness::create_database(&cluster.url("postgres"), "outage").await;
    let pool = db::connect(&cluster.url("outage"), &db::PoolConfig::default()).unwrap();
    db::migrate(&pool).await.unwrap();
    let store = Store::with_config(pool.clone(), fast_config());
    let mut cfg = config("survivor");
    cfg.concurrency = 4;
    cfg.lease_ttl = Duration::from_secs(2);
    let worker = Running::start(&store, builtins(), cfg);
    let jobs = (0..40).map(|i| NewJob::new("sleep", json!({ "ms": 100 + i })));
    let ids: Vec<JobId> = store
        .enqueue_batch(jobs.collect())
        .await
        .unwrap()
        .into_iter()
        .map(|item| match item {
            faultline::BatchItem::Created(job) => job.id,
            other => panic!("{other:?}"),
        })
        .collect();
    wait_for("a few jobs to finish", Duration::from_secs(20), || async {
        (count_in_state(&pool, "succeeded").await >= 4).then_some(())
    })
    .await;

    // The outage: Postgres dies as in a crash, stays down for 3 s (longer than the 2 s lease,
    // so the worker must self-fence), then comes back.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !worker.handle.is_finished(),
        "the worker exited during the outage"
    );
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .unwrap();

    wait_for(
        "every job to succeed after the outage",
        Duration::from_secs(60),
        || async { (count_in_state(&pool, "succeeded").await == ids.len() as i64).then_some(()) },
    )
    .await;
    assert!(
        !worker.handle.is_finished(),
        "the same worker finished the work"
    );
    assert!(worker.count("faultline_db_errors_total") > 0.0);
    assert_eq!(worker.metrics.db_up.get(), 1.0);
    worker.stop().await;
    pool.close().await;
}

mod webhook {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Router;

    type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

    /// A local receiver: `/ok` answers 204, `/broken` 500, `/missing` 404.
    async fn receiver() -> (String, Seen) {
        let seen: Seen = Arc::default();
        async fn record(State(seen): State<Seen>, headers: HeaderMap, body: String) {
            seen.lock().unwrap().push((headers, body));
        }
        let app = Router::new()
            .route(
                "/ok",
                post(|s: State<Seen>, h: HeaderMap, b: String| async move {
                    record(s, h, b).await;
                    StatusCode::NO_CONTENT
                }),
            )
            .route(
                "/broken",
                post(|s: State<Seen>, h: HeaderMap, b: String| async move {
                    record(s, h, b).await;
                    StatusCode::INTERNAL_SERVER_ERROR
                }),
            )
            .route(
                "/answer",
                // 10,000 bytes with a NUL and invalid UTF-8 up front: the result keeps the
                // first 4 KiB, made storable.
                post(|s: State<Seen>, h: HeaderMap, b: String| async move {
                    record(s, h, b).await;
                    let mut body = b"ok\0\xff".to_vec();
                    body.resize(10_000, b'a');
                    (StatusCode::OK, body)
                }),
            )
            .route(
                "/missing",
                post(|s: State<Seen>, h: HeaderMap, b: String| async move {
                    record(s, h, b).await;
                    StatusCode::NOT_FOUND
                }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn webhook_delivers_to_an_allowed_local_receiver_and_classifies_answers() {
        let db = TestDb::new().await;
        let store = db.store();
        let (base, seen) = receiver().await;
        let registry = builtin_registry(WebhookConfig {
            allow_private: true,
            ..WebhookConfig::default()
        })
        .unwrap();
        let worker = Running::start(&store, registry, config("hooks"));
        let ok = enqueue(
            &store,
            NewJob::new(
                "webhook",
                json!({"url": format!("{base}/ok"), "body": {"n": 1},
                        // A payload cannot pass off its own fencing token or key.
                        "headers": {"X-Trace": "t-1", "Faultline-Fencing-Token": "1",
                                    "Idempotency-Key": "spoofed"}}),
            ),
        )
        .await;
        let broken = enqueue(
            &store,
            NewJob::new("webhook", json!({"url": format!("{base}/broken")})).with_max_attempts(2),
        )
        .await;
        let missing = enqueue(
            &store,
            NewJob::new("webhook", json!({"url": format!("{base}/missing")})).with_max_attempts(5),
        )
        .await;

        let answered = enqueue(
            &store,
            NewJob::new("webhook", json!({"url": format!("{base}/answer")})),
        )
        .await;
        let delivered =
            wait_for_state(&store, ok, JobState::Succeeded, Duration::from_secs(20)).await;
        // docs/library.md: the status and the first 4 KiB of the answer are the job's result.
        assert_eq!(
            delivered.result.map(|r| r.to_value()),
            Some(json!({"status": 204, "body": "", "truncated": false}))
        );
        let job = wait_for_state(
            &store,
            answered,
            JobState::Succeeded,
            Duration::from_secs(20),
        )
        .await;
        let result = job.result.unwrap().to_value();
        assert_eq!(result["status"], 200);
        assert_eq!(result["truncated"], true);
        let body = result["body"].as_str().unwrap();
        assert!(
            body.starts_with("ok\u{fffd}\u{fffd}aaa"),
            "{:?}",
            &body[..20]
        );
        assert!(body.len() <= 4096 && body.len() > 4000, "{}", body.len());
        let job = wait_for_state(&store, broken, JobState::Failed, Duration::from_secs(20)).await;
        assert_eq!(job.attempts, 2, "a 5xx is retried");
        assert!(job.last_error.unwrap().contains("500"));
        let job = wait_for_state(&store, missing, JobState::Failed, Duration::from_secs(20)).await;
        assert_eq!(job.attempts, 1, "a 404 is permanent");

        {
            let seen = seen.lock().unwrap();
            let (headers, body) = seen
                .iter()
                .find(|(h, _)| h.get("x-trace").is_some())
                .expect("the /ok delivery");
            assert_eq!(body, r#"{"n":1}"#);
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(headers["faultline-job-id"], ok.to_string().as_str());
            // docs/library.md: the attempt, the fencing token of the lease that sent it, and the job id
            // as the idempotency key — each once, the payload's copies replaced.
            assert_eq!(headers["faultline-attempt"], "1");
            let token = delivered.lease_token.unwrap().to_string();
            assert_eq!(headers["faultline-fencing-token"], token.as_str());
            assert_eq!(headers.get_all("faultline-fencing-token").iter().count(), 1);
            assert_eq!(headers["idempotency-key"], ok.to_string().as_str());
            assert_eq!(headers.get_all("idempotency-key").iter().count(), 1);
        }
        worker.stop().await;
    }

    #[tokio::test]
    async fn webhook_refuses_loopback_private_and_metadata_addresses_by_default() {
        let db = TestDb::new().await;
        let store = db.store();
        let (base, seen) = receiver().await;
        let port = base.rsplit(':').next().unwrap().to_owned();
        let worker = Running::start(&store, builtins(), config("guarded"));
        // Nothing is sent to any of these: the address is refused before connecting.
        let targets = [
            format!("{base}/ok"),
            format!("http://localhost:{port}/ok"),
            "http://10.0.0.1/hook".to_owned(),
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "http://[::1]/hook".to_owned(),
        ];
        let mut ids = Vec::new();
        for url in &targets {
            ids.push(enqueue(&store, NewJob::new("webhook", json!({ "url": url }))).await);
        }
        for (id, url) in ids.into_iter().zip(&targets) {
            let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(20)).await;
            assert_eq!(job.attempts, 1, "{url}: a refusal is permanent");
            let error = job.last_error.unwrap();
            assert!(error.contains("refused"), "{url}: {error}");
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "a refused webhook was delivered"
        );
        worker.stop().await;
    }
}

#[test]
fn worker_settings_that_cannot_work_are_refused() {
    type BreakIt = fn(&mut WorkerConfig);
    let cases: [(&str, BreakIt); 5] = [
        ("concurrency", |c| c.concurrency = 0),
        ("queues", |c| c.queues = vec![String::new()]),
        ("lease_ttl", |c| c.lease_ttl = Duration::from_millis(10)),
        ("heartbeat_interval", |c| {
            c.heartbeat_interval = Some(c.lease_ttl)
        }),
        ("worker_id", |c| c.worker_id = " ".into()),
    ];
    for (setting, break_it) in cases {
        let mut config = WorkerConfig::default();
        break_it(&mut config);
        let error = config.validate().unwrap_err();
        assert_eq!(error.setting, setting);
    }
    WorkerConfig::default().validate().unwrap();
}
