//! The API over real sockets: concurrency, an outage, the full metrics surface, and
//! `faultline up` run as a newcomer would.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use faultline::http::{app, ApiConfig, AppState};
use faultline::maintenance::{DepthSampler, DepthSamplerConfig};
use faultline::metrics::{Metrics, ALL_NAMES};
use faultline::worker::{builtin_registry, WebhookConfig, Worker, WorkerConfig};
use faultline::{db, Store};
use faultline_pg::{Cluster, StopMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::harness::{fast_config, wait_for, TestDb};

/// Serve `app` for `store` on a free port until the token is cancelled.
async fn serve(store: Store, metrics: Arc<Metrics>) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let router = app(AppState::new(store, metrics, ApiConfig::default()));
    tokio::spawn(faultline::http::serve(listener, router, shutdown.clone()));
    (format!("http://{addr}"), shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_posts_with_one_key_make_one_job_one_201_and_29_replays() {
    let db = TestDb::new().await;
    let (base, shutdown) = serve(db.store(), Arc::new(Metrics::new())).await;
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (client, base) = (client.clone(), base.clone());
        tasks.spawn(async move {
            let response = client
                .post(format!("{base}/v1/jobs"))
                .header("idempotency-key", "pay-42")
                .json(&json!({"kind": "charge", "payload": {"cents": 4200}}))
                .send()
                .await
                .unwrap();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, replayed, body["id"].as_str().unwrap().to_owned())
        });
    }
    let mut statuses = Vec::new();
    let mut ids = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let (status, replayed, id) = result.unwrap();
        assert_eq!(replayed, status == 200);
        statuses.push(status);
        ids.insert(id);
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        29,
        "{statuses:?}"
    );
    assert_eq!(ids.len(), 1);

    let conflict = client
        .post(format!("{base}/v1/jobs"))
        .header("idempotency-key", "pay-42")
        .json(&json!({"kind": "charge", "payload": {"cents": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status().as_u16(), 409);
    let rows: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_job_routes_answer_503_health_stays_200_and_the_same_server_recovers() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::temporary)
            .await
            .unwrap()
            .expect("a private cluster of this test's own"),
    );
    crate::harness::create_database(&cluster.url("postgres"), "api_outage").await;
    let pool = db::connect(&cluster.url("api_outage"), &db::PoolConfig::default()).unwrap();
    db::migrate(&pool).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let (base, shutdown) = serve(Store::new(pool.clone()), metrics.clone()).await;
    let client = reqwest::Client::new();
    let post = || {
        client
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"kind": "noop"}))
            .send()
    };
    let created: Value = post().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        let response = post().await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "database_unavailable");
    }
    let get = client
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 503);
    let list = client
        .get(format!("{base}/v1/queues"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 503);
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(metrics.db_up.get(), 0.0);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .unwrap();
    let status = wait_for(
        "the API to accept jobs again",
        Duration::from_secs(30),
        || async {
            let status = post().await.ok()?.status().as_u16();
            (status == 201).then_some(status)
        },
    )
    .await;
    assert_eq!(status, 201);
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let job = client
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        job.status().as_u16(),
        200,
        "the job enqueued before the outage survived"
    );
    shutdown.cancel();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_carry_every_spec_name() {
    let db = TestDb::new().await;
    let store = Store::with_config(db.pool.clone(), fast_config());
    let metrics = Arc::new(Metrics::new());
    let (base, shutdown) = serve(store.clone(), metrics.clone()).await;
    let worker = Worker::new(
        store.clone(),
        builtin_registry(WebhookConfig::default()).unwrap(),
        WorkerConfig {
            worker_id: "metrics".into(),
            poll_interval: Duration::from_millis(100),
            maintainer: None,
            ..WorkerConfig::default()
        },
    )
    .unwrap()
    .with_metrics(metrics.clone());
    let worker = tokio::spawn(worker.run(shutdown.clone()));

    let client = reqwest::Client::new();
    let enqueue = |body: Value| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let response = client
                .post(format!("{base}/v1/jobs"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            body["id"].as_str().unwrap().to_owned()
        }
    };
    let ok = enqueue(json!({"kind": "noop", "idempotency_key": "m-1"})).await;
    enqueue(json!({"kind": "noop", "idempotency_key": "m-1"})).await; // a replay
    let retried = enqueue(json!({"kind": "fail", "payload": {"times": 1}})).await;
    let failed = enqueue(json!({"kind": "fail", "payload": {"times": 9}, "max_attempts": 1})).await;
    for (id, state) in [
        (ok, "succeeded"),
        (retried, "succeeded"),
        (failed, "failed"),
    ] {
        wait_for(
            &format!("job {id} to be {state}"),
            Duration::from_secs(20),
            || async {
                let job: Value = client
                    .get(format!("{base}/v1/jobs/{id}"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (job["state"] == state).then_some(())
            },
        )
        .await;
    }
    // Counters move just after the rows commit: wait for the last ones rather than race them.
    wait_for(
        "the worker's counters to catch up",
        Duration::from_secs(10),
        || async {
            let text = metrics.render();
            let settled = text
                .contains("faultline_jobs_failed_total{kind=\"fail\",queue=\"default\"} 1")
                && text
                    .contains("faultline_jobs_succeeded_total{kind=\"fail\",queue=\"default\"} 1")
                && text
                    .contains("faultline_jobs_succeeded_total{kind=\"noop\",queue=\"default\"} 1");
            settled.then_some(())
        },
    )
    .await;
    DepthSampler::new(
        store.clone(),
        DepthSamplerConfig::default(),
        metrics.clone(),
    )
    .run_once()
    .await
    .unwrap();
    // A schedule, and one scheduler pass: its series exist (at zero if nothing was due).
    store
        .put_schedule(
            "nightly",
            &faultline::schedule::ScheduleSpec {
                cron: "0 3 * * *".into(),
                kind: "noop".into(),
                payload: serde_json::json!({}).into(),
                queue: None,
                priority: None,
                max_attempts: None,
                timezone: None,
                misfire: None,
                paused: None,
            },
        )
        .await
        .unwrap();
    faultline::maintenance::Scheduler::new(
        store.clone(),
        faultline::maintenance::SchedulerConfig::default(),
        metrics.clone(),
    )
    .run_once()
    .await
    .unwrap();

    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // A real grammar (label values may hold `{`, `}`, escaped quotes), all input consumed.
    let (_, families) =
        nom_openmetrics::parser::prometheus(&text).expect("/metrics is valid Prometheus text");
    let samples: Vec<_> = families.iter().flat_map(|f| f.samples.iter()).collect();
    let names: HashSet<&str> = samples.iter().map(|s| s.name()).collect();
    for name in ALL_NAMES {
        let present = names.contains(name)
            || names.contains(format!("{name}_count").as_str())
            || names.contains(format!("{name}_bucket").as_str());
        assert!(present, "{name} missing from /metrics:\n{text}");
    }
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s.name() == metric)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels().iter().any(|l| l.name == *k && l.value == *v))
            })
            .map(|s| s.number())
            .sum()
    };
    assert_eq!(value("faultline_jobs_enqueued_total", &[]), 3.0);
    assert_eq!(
        value("faultline_jobs_deduplicated_total", &[("queue", "default")]),
        1.0
    );
    assert_eq!(
        value("faultline_jobs_succeeded_total", &[("kind", "fail")]),
        1.0
    );
    assert_eq!(
        value("faultline_job_retries_total", &[("kind", "fail")]),
        1.0
    );
    assert_eq!(
        value("faultline_jobs_failed_total", &[("kind", "fail")]),
        1.0
    );
    assert_eq!(
        value(
            "faultline_queue_depth",
            &[("queue", "default"), ("state", "succeeded")]
        ),
        2.0
    );
    let gets = value(
        "faultline_http_requests_total",
        &[
            ("route", "/v1/jobs/{id}"),
            ("method", "GET"),
            ("status", "200"),
        ],
    );
    assert!(
        gets >= 3.0,
        "{gets}: {}",
        text.lines()
            .filter(|l| l.contains("http_requests"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !text.contains("route=\"/v1/jobs/0"),
        "a raw path leaked into a route label"
    );
    shutdown.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn faultline_up_runs_for_a_newcomer_guards_and_restarts_its_postgres_and_leaves_nothing_behind(
) {
    // A fresh directory the server user can enter, as a checkout would be.
    let dir = std::env::temp_dir().join(format!("faultline-up-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let binary = env!("CARGO_BIN_EXE_faultline");
    let child = tokio::process::Command::new(binary)
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    let client = reqwest::Client::new();
    wait_for(
        "faultline up to answer /health",
        Duration::from_secs(60),
        || async {
            let response = client.get(format!("{base}/health")).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;

    let jobs = |args: &[&str]| {
        let mut command = std::process::Command::new(binary);
        command
            .arg("jobs")
            .args(args)
            .args(["--url", &base, "--json"]);
        command
    };
    let output = jobs(&["enqueue", "noop"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job: Value = serde_json::from_slice(&output.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let succeeded = |id: String| {
        let get = jobs(&["get", &id]);
        wait_for_command_state(get, "succeeded")
    };
    succeeded(id).await;
    // A human-readable error and a non-zero exit for a missing job.
    let output = std::process::Command::new(binary)
        .args([
            "jobs",
            "get",
            &uuid::Uuid::now_v7().to_string(),
            "--url",
            &base,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_found"));

    // Another user on the host cannot walk in: the cluster wants its password (kept 0600), on
    // TCP and on the socket alike.
    let data = dir.join(".faultline").join("pg").join("data");
    let password_file = data.join("faultline.password");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&password_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "password file mode {mode:o}");
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let lines: Vec<&str> = pid_file.lines().collect();
    let (pg_pid, pg_port, socket_dir) = (lines[0], lines[3], lines[4]);
    for url in [
        format!("postgres://postgres@127.0.0.1:{pg_port}/postgres"),
        format!("postgres://postgres:wrong@127.0.0.1:{pg_port}/postgres"),
        format!("postgres://postgres@localhost/postgres?host={socket_dir}&port={pg_port}"),
    ] {
        use sqlx::Connection;
        let error = sqlx::PgConnection::connect(&url).await.unwrap_err();
        assert!(
            error.to_string().contains("password"),
            "{url} should need the password: {error}"
        );
    }

    // Its Postgres dies (as with `pg_ctl stop -m immediate`): `up` starts it again and goes on
    // serving, without a restart of its own.
    kill(
        Pid::from_raw(pg_pid.trim().parse().unwrap()),
        Signal::SIGQUIT,
    )
    .unwrap();
    wait_for(
        "up to restart its Postgres (a new postmaster pid)",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
            let pid = text.lines().next()?.trim().to_owned();
            (pid != pg_pid.trim() && text.contains("ready")).then_some(())
        },
    )
    .await;
    let output = wait_for(
        "a job to be accepted after the restart",
        Duration::from_secs(30),
        || async {
            let output = jobs(&["enqueue", "noop"]).output().ok()?;
            output.status.success().then_some(output)
        },
    )
    .await;
    let job: Value = serde_json::from_slice(&output.stdout).unwrap();
    succeeded(job["id"].as_str().unwrap().to_owned()).await;
    assert!(child.id().is_some(), "up must still be the same process");

    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("faultline up exits after SIGINT")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("Faultline is up"), "{stdout}");
    assert!(stdout.contains("curl"), "{stdout}");

    // No postgres of this cluster survives.
    let cluster_dir = dir
        .join(".faultline")
        .join("pg")
        .to_string_lossy()
        .into_owned();
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&cluster_dir))
        .collect();
    assert!(survivors.is_empty(), "{survivors:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run `command` (a `jobs get … --json`) until the job it prints is in `state`.
async fn wait_for_command_state(mut command: std::process::Command, state: &str) {
    wait_for(
        &format!("the job to be {state}"),
        Duration::from_secs(30),
        || {
            let output = command.output().ok();
            async move {
                let job: Value = serde_json::from_slice(&output?.stdout).ok()?;
                (job["state"] == state).then_some(())
            }
        },
    )
    .await;
}
