//! docs/operations.md PgBouncer: the store, the API and workers through a real PgBouncer (Debian's) in
//! transaction pooling mode — claims exactly once, stale reports rejected, idempotency, the
//! election, `LISTEN` on a direct URL or polling without it, shutdown hand-back, and an outage
//! behind the pooler answered 503.

use std::collections::HashSet;
use std::time::Duration;

use faultline::{JobState, LeaseLostReason, NewJob, StoreError};
use faultline_pg::{Bouncer, BouncerOptions, BouncerTarget, Cluster, StopMode};
use serde_json::json;

use crate::harness::procs::Proc;
use crate::harness::{claim_one, default_queue, wait_for, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_each_job_is_claimed_once_and_stale_reports_change_nothing() {
    let db = TestDb::new().await;
    let store = db.pooled_store().await;

    // Enqueue (batch, keyed and plain) through the pooler: the unnamed statements of one
    // transaction may each land on another server connection, and nothing collides.
    let jobs: Vec<NewJob> = (0..400)
        .map(|i| NewJob::new("k", json!({"i": i})))
        .collect();
    assert_eq!(store.enqueue_batch(jobs).await.unwrap().len(), 400);
    let keyed = NewJob::new("k", json!({"keyed": true})).with_idempotency_key("through-bouncer");
    let first = store.enqueue(keyed.clone()).await.unwrap();
    assert!(!first.was_replayed());
    assert!(store.enqueue(keyed).await.unwrap().was_replayed());

    // Eight claimers at once: every job exactly once.
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_batch(
                        &default_queue(),
                        &format!("c{c}"),
                        16,
                        Duration::from_secs(30),
                    )
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                for claimed in batch {
                    store.complete(&claimed.lease).await.unwrap();
                    mine.push(claimed.job.id);
                }
            }
        });
    }
    let mut seen = HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        for id in ids.unwrap() {
            assert!(seen.insert(id), "job {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), 401);

    // A stale lease: reaped and re-claimed by another worker; the old holder's reports fail.
    let id = store
        .enqueue(NewJob::new("k", json!({})))
        .await
        .unwrap()
        .job()
        .id;
    let a = claim_one(&store, "a", Duration::from_millis(50)).await;
    wait_for("A's lease reaped", Duration::from_secs(10), || async {
        (store.reap_expired(10).await.unwrap().total() == 1).then_some(())
    })
    .await;
    let b = claim_one(&store, "b", Duration::from_secs(30)).await;
    assert!(b.recovered && b.lease.token > a.lease.token);
    match store.complete(&a.lease).await {
        Err(StoreError::LeaseLost { reason, .. }) => {
            assert_eq!(reason, LeaseLostReason::Superseded)
        }
        other => panic!("stale completion through PgBouncer: {other:?}"),
    }
    store.complete(&b.lease).await.unwrap();
    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.lease_owner.as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_workers_run_through_pgbouncer_listening_directly_or_polling() {
    let db = TestDb::new().await;
    let pooled = db.pooled_url();
    let api = Proc::api(&pooled, "api", &[]);
    // One worker LISTENs on a direct connection and polls only once a minute: its jobs start
    // because NOTIFY reached it. The other has no direct URL and finds its jobs by polling.
    let listening = Proc::worker(
        &pooled,
        "listening",
        &[
            "--queues",
            "notified",
            "--listen-database-url",
            &db.url,
            "--poll-interval",
            "60s",
        ],
    );
    let polling = Proc::worker(
        &pooled,
        "polling",
        &["--queues", "polled,slow", "--shutdown-grace", "100ms"],
    );
    let base = format!("http://127.0.0.1:{}", api.port);
    let http = reqwest::Client::new();
    wait_for(
        "two workers registered",
        Duration::from_secs(30),
        || async {
            let list: serde_json::Value = http
                .get(format!("{base}/v1/workers"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (list["workers"].as_array()?.len() == 2 && list["leader"]["holder"].is_string())
                .then_some(())
        },
    )
    .await;
    // The listening worker has had its first (empty) claim; from now on only NOTIFY wakes it.
    wait_for(
        "the listener connected",
        Duration::from_secs(30),
        || async { listening.log().contains("worker started").then_some(()) },
    )
    .await;

    let mut ids = Vec::new();
    for (queue, n) in [("notified", 20), ("polled", 20)] {
        for i in 0..n {
            let response = http
                .post(format!("{base}/v1/jobs"))
                .header("idempotency-key", format!("{queue}-{i}"))
                .json(&json!({"kind": "noop", "queue": queue, "payload": {"i": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
            let job: serde_json::Value = response.json().await.unwrap();
            ids.push(job["id"].as_str().unwrap().to_owned());
        }
    }
    // A replay through the pooler.
    let replay = http
        .post(format!("{base}/v1/jobs"))
        .header("idempotency-key", "notified-0")
        .json(&json!({"kind": "noop", "queue": "notified", "payload": {"i": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);

    let store = db.store();
    wait_for("all 40 jobs succeeded", Duration::from_secs(30), || async {
        let mut done = 0;
        for id in &ids {
            if store.get(id.parse().ok()?).await.ok()?.state == JobState::Succeeded {
                done += 1;
            }
        }
        (done == ids.len()).then_some(())
    })
    .await;
    for p in [&api, &listening, &polling] {
        let log = p.log();
        assert!(!log.contains("prepared statement"), "{}: {log}", p.name);
        assert!(!log.contains("panicked"), "{}: {log}", p.name);
    }

    // Shutdown hand-back through the pooler: a running job goes back to queued, its attempt
    // not counted.
    let slow = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "sleep", "queue": "slow", "payload": {"ms": 60000}}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let slow_id = slow["id"].as_str().unwrap().parse().unwrap();
    wait_for("the slow job running", Duration::from_secs(20), || async {
        (store.get(slow_id).await.ok()?.state == JobState::Running).then_some(())
    })
    .await;
    polling.terminate().await;
    let job = store.get(slow_id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "handed back on shutdown");
    assert_eq!(job.attempts, 0, "a hand-back does not spend an attempt");
    listening.terminate().await;
    api.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_behind_pgbouncer_the_api_answers_503_and_recovers() {
    // A cluster and a PgBouncer of this test's own: it stops the server.
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(Cluster::temporary)
            .await
            .unwrap()
            .unwrap(),
    );
    let direct = cluster.url("postgres");
    let migrate = faultline::db::connect(&direct, &faultline::db::PoolConfig::default()).unwrap();
    faultline::db::migrate(&migrate).await.unwrap();
    migrate.close().await;
    let bouncer = Bouncer::start(
        BouncerTarget::from_url(&direct).unwrap(),
        BouncerOptions::default(),
    )
    .unwrap();
    let api = Proc::api(&bouncer.url("postgres"), "api", &[]);
    let base = format!("http://127.0.0.1:{}", api.port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let post = || async {
        http.post(format!("{base}/v1/jobs"))
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_for("the API up", Duration::from_secs(30), || async {
        (post().await == 201).then_some(())
    })
    .await;

    cluster.stop(StopMode::Immediate).unwrap();
    let status = wait_for(
        "a 503 while Postgres is down",
        Duration::from_secs(30),
        || async {
            let status = post().await;
            assert_ne!(status, 500, "a 500 while the database is down");
            (status == 503).then_some(status)
        },
    )
    .await;
    assert_eq!(status, 503);
    for _ in 0..3 {
        assert!(matches!(post().await, 503), "every answer is 503 meanwhile");
    }

    tokio::task::spawn_blocking({
        let cluster = cluster.clone();
        move || cluster.start()
    })
    .await
    .unwrap()
    .unwrap();
    wait_for(
        "201 again after the restart",
        Duration::from_secs(30),
        || async { (post().await == 201).then_some(()) },
    )
    .await;
    let log = api.log();
    assert!(!log.contains("panicked"), "{log}");
    api.terminate().await;
}
