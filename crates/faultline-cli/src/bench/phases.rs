//! The benchmark's phases. Each returns one figure; the caller resets the job table (truncate +
//! vacuum, River's method) before each.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use faultline::http::{app, ApiConfig, AppState};
use faultline::metrics::Metrics;
use faultline::{db, JobId, NewJob, Store};
use faultline_pg::{spawn_tied, Cluster, ClusterOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

/// The benchmark's database and the binary it starts workers from.
pub struct Bench {
    pub pool: PgPool,
    pub store: Store,
    pub url: String,
    pub server: String,
    _cluster: Option<Cluster>,
    exe: std::path::PathBuf,
}

impl Bench {
    pub async fn start(database_url: Option<&str>) -> anyhow::Result<Bench> {
        let (cluster, admin) = match database_url {
            Some(url) => (None, url.to_owned()),
            None => {
                // Durable (fsync on), as a production server would run.
                let options = ClusterOptions {
                    durable: true,
                    ..ClusterOptions::default()
                };
                let cluster =
                    tokio::task::spawn_blocking(move || Cluster::temporary_with(options)).await??;
                let admin = cluster.url("postgres");
                (Some(cluster), admin)
            }
        };
        let name = format!("faultline_bench_{}", std::process::id());
        let mut conn = PgConnection::connect(&admin)
            .await
            .context("connect to the benchmark server")?;
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&mut conn)
            .await?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await?;
        let server: String = sqlx::query_scalar("select version()")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        let url = faultline::db::with_database(&admin, &name);
        let pool = db::connect(
            &url,
            &db::PoolConfig {
                max_connections: 40,
                ..db::PoolConfig::default()
            },
        )?;
        db::migrate(&pool).await?;
        Ok(Bench {
            store: Store::new(pool.clone()),
            pool,
            url,
            server,
            _cluster: cluster,
            exe: std::env::current_exe()?,
        })
    }

    /// Empty the job table and vacuum it, so every phase starts from the same state.
    pub async fn reset(&self) -> anyhow::Result<()> {
        sqlx::query(
            "truncate faultline.jobs, faultline.job_history, faultline.queue_finished_counts,
                      faultline.job_edges, faultline.lane_marks",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query("vacuum analyze faultline.jobs")
            .execute(&self.pool)
            .await?;
        let _ = sqlx::query("checkpoint").execute(&self.pool).await;
        Ok(())
    }

    /// Enqueue `n` queued noop jobs (set-up, not measured) through [`Store::enqueue_batch`] in
    /// batches of 1,000 from four producers: the jobs are exactly what a producer makes
    /// (time-ordered UUIDv7 ids, fingerprints, every column as the API writes it), as the peers'
    /// harnesses pre-insert through their own bulk APIs. Random (v4) ids, which an earlier
    /// version inserted straight into the table, scatter a drain's claims over the whole heap
    /// and understate the drain by about a fifth.
    pub async fn prefill(&self, n: usize) -> anyhow::Result<()> {
        const BATCH: usize = 1000;
        let batches = n.div_ceil(BATCH);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let store = self.store.clone();
            let next = next.clone();
            tasks.spawn(async move {
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if b >= batches {
                        return anyhow::Ok(());
                    }
                    let size = BATCH.min(n - b * BATCH);
                    let jobs = (0..size).map(|_| NewJob::new("noop", json!({}))).collect();
                    store.enqueue_batch(jobs).await?;
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        sqlx::query("vacuum analyze faultline.jobs")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub fn worker(&self, id: &str, args: &[&str]) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.exe);
        command.args(["worker", "--worker-id", id, "--poll-interval", "1s"]);
        // An eager reaper (the recovery phase) unless the phase sets its own.
        if !args.contains(&"--reaper-interval") {
            command.args(["--reaper-interval", "250ms"]);
        }
        command
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("FAULTLINE_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(spawn_tied(command, Signal::SIGKILL)?)
    }

    async fn count(&self, state: &str) -> anyhow::Result<i64> {
        Ok(
            // Finished jobs from the counters (a count over history would load the very drain
            // it measures); live ones counted.
            sqlx::query_scalar(
                "select case when $1 in ('queued', 'running')
                    then (select count(*) from faultline.jobs where state = $1)
                    else (select coalesce(sum(n), 0)::int8 from faultline.queue_finished_counts
                          where state = $1) end",
            )
            .bind(state)
            .fetch_one(&self.pool)
            .await?,
        )
    }

    pub async fn wait_for_count(
        &self,
        state: &str,
        n: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.count(state).await? < n {
            if Instant::now() > deadline {
                bail!("timed out waiting for {n} {state} jobs");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Kill the worker processes `children` and reap them.
pub fn stop_children(children: Vec<Child>) {
    stop(children)
}

fn stop(children: Vec<Child>) {
    for mut child in children {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }
}

/// Run `clients` loops of `op` for `period`; operations per second (each op counts `per_op`).
async fn closed_loop<F, Fut>(
    clients: usize,
    period: Duration,
    per_op: u64,
    op: F,
) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + period;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (op, done) = (op.clone(), done.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                op().await?;
                done.fetch_add(per_op, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub async fn enqueue_rust(bench: &Bench, clients: usize, period: Duration) -> anyhow::Result<f64> {
    let store = bench.store.clone();
    closed_loop(clients, period, 1, move || {
        let store = store.clone();
        async move {
            store.enqueue(NewJob::new("noop", json!({"n": 1}))).await?;
            Ok(())
        }
    })
    .await
}

pub async fn bulk_rust(bench: &Bench, clients: usize, period: Duration) -> anyhow::Result<f64> {
    let store = bench.store.clone();
    closed_loop(clients, period, 1000, move || {
        let store = store.clone();
        async move {
            let jobs = (0..1000)
                .map(|i| NewJob::new("noop", json!({"n": i})))
                .collect();
            store.enqueue_batch(jobs).await?;
            Ok(())
        }
    })
    .await
}

/// Serve the API in-process on a real socket; the base URL.
async fn api(bench: &Bench) -> anyhow::Result<(String, tokio_util::sync::CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let router = app(AppState::new(
        bench.store.clone(),
        Arc::new(Metrics::new()),
        ApiConfig::default(),
    ));
    tokio::spawn(faultline::http::serve(listener, router, shutdown.clone()));
    Ok((base, shutdown))
}

pub async fn enqueue_http(bench: &Bench, clients: usize, period: Duration) -> anyhow::Result<f64> {
    let (base, shutdown) = api(bench).await?;
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/jobs");
    let rate = closed_loop(clients, period, 1, move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let status = http
                .post(&url)
                .json(&json!({"kind": "noop", "payload": {"n": 1}}))
                .send()
                .await?
                .status();
            if status.as_u16() != 201 {
                bail!("POST /v1/jobs answered {status}");
            }
            Ok(())
        }
    })
    .await;
    shutdown.cancel();
    rate
}

pub async fn bulk_http(bench: &Bench, clients: usize, period: Duration) -> anyhow::Result<f64> {
    let (base, shutdown) = api(bench).await?;
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/jobs/batch");
    let body = serde_json::to_vec(
        &json!({"jobs": (0..1000).map(|i| json!({"kind": "noop", "payload": {"n": i}})).collect::<Vec<_>>()}),
    )?;
    let rate = closed_loop(clients, period, 1000, move || {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        async move {
            let status = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?
                .status();
            if status.as_u16() != 200 {
                bail!("POST /v1/jobs/batch answered {status}");
            }
            Ok(())
        }
    })
    .await;
    shutdown.cancel();
    rate
}

/// Drain `jobs` pre-inserted noop jobs with `workers` processes × `concurrency`: jobs/s from
/// the first start to the last finish (database timestamps, so process start-up is excluded).
pub async fn drain(
    bench: &Bench,
    jobs: usize,
    workers: usize,
    concurrency: u32,
    prefetch: u32,
) -> anyhow::Result<f64> {
    bench.prefill(jobs).await?;
    drain_prefilled(bench, jobs, workers, concurrency, prefetch).await
}

/// The drain of `jobs` noop jobs; `with_dependents`: half of them parents, each with one child
/// waiting on it (promoted by the database when its parent succeeds), else all independent.
/// Parents and children are inserted straight into the table with time-ordered ids.
pub async fn drain_dependents(
    bench: &Bench,
    jobs: usize,
    (workers, concurrency, prefetch): (usize, u32, u32),
    with_dependents: bool,
) -> anyhow::Result<f64> {
    if with_dependents {
        // Time-ordered ids, as a producer makes them (see `Bench::prefill`).
        let ids = |n: usize| -> Vec<uuid::Uuid> { (0..n).map(|_| uuid::Uuid::now_v7()).collect() };
        sqlx::query(
            "with parents as (
                 insert into faultline.jobs (id, kind, has_dependents)
                 select p, 'noop', true from unnest($1::uuid[]) as p
                 returning id),
             children as (
                 insert into faultline.jobs (id, kind, state, depends_on, pending_dependencies)
                 select c, 'noop', 'waiting', array[p], 1
                 from unnest($1::uuid[], $2::uuid[]) as pc(p, c))
             insert into faultline.job_edges (parent, child)
             select p, c from unnest($1::uuid[], $2::uuid[]) as pc(p, c)",
        )
        .bind(ids(jobs / 2))
        .bind(ids(jobs / 2))
        .execute(&bench.pool)
        .await?;
        sqlx::query("vacuum analyze faultline.jobs")
            .execute(&bench.pool)
            .await?;
    } else {
        bench.prefill(jobs / 2 * 2).await?;
    }
    drain_prefilled(bench, jobs / 2 * 2, workers, concurrency, prefetch).await
}

/// Dependency work at the sizes the limits allow (issue 28): seconds to enqueue a batch of
/// 1,000 jobs each depending on the 100 before it; to complete a parent with 10,000 waiting
/// dependents (all promoted in that completion); to cancel one (all cancelled with it).
pub async fn dependency_work(bench: &Bench) -> anyhow::Result<[f64; 3]> {
    use faultline::Dependency;
    let store = Store::new(bench.pool.clone());
    let dense: Vec<NewJob> = (0..1000)
        .map(|i: usize| NewJob {
            depends_on: (i.saturating_sub(100)..i)
                .map(Dependency::Earlier)
                .collect(),
            ..NewJob::new("noop", serde_json::json!({})).with_queue("deps-dense")
        })
        .collect();
    let started = Instant::now();
    store.enqueue_batch(dense).await?;
    let dense = started.elapsed().as_secs_f64();
    let succeed = settle_dependents(bench, &store, false).await?;
    let cancel = settle_dependents(bench, &store, true).await?;
    Ok([dense, succeed, cancel])
}

/// Seconds to settle 10,000 dependents waiting on one parent, by completing the parent or (with
/// `cancel`) cancelling it; fails if any is left waiting.
async fn settle_dependents(bench: &Bench, store: &Store, cancel: bool) -> anyhow::Result<f64> {
    use faultline::Dependency;
    let queue = if cancel {
        "deps-cancel"
    } else {
        "deps-succeed"
    };
    let parent = store
        .enqueue(NewJob::new("noop", serde_json::json!({})).with_queue(queue))
        .await?
        .into_job()
        .id;
    for chunk in 0..10 {
        let children: Vec<NewJob> = (0..1000)
            .map(|_| NewJob {
                depends_on: vec![Dependency::Job(parent)],
                ..NewJob::new("noop", serde_json::json!({ "chunk": chunk })).with_queue(queue)
            })
            .collect();
        store.enqueue_batch(children).await?;
    }
    let started = if cancel {
        let started = Instant::now();
        store.cancel(parent).await?;
        started
    } else {
        let claimed = store
            .claim_batch(&[queue.to_owned()], "bench", 1, Duration::from_secs(60))
            .await?;
        let lease = &claimed.first().context("the parent was not claimed")?.lease;
        let started = Instant::now();
        store.complete(lease).await?;
        started
    };
    let took = started.elapsed().as_secs_f64();
    let waiting: i64 = sqlx::query_scalar(
        "select count(*) from faultline.jobs where queue = $1 and state = 'waiting'",
    )
    .bind(queue)
    .fetch_one(&bench.pool)
    .await?;
    anyhow::ensure!(
        waiting == 0,
        "{waiting} dependents of {queue} were left waiting"
    );
    Ok(took)
}

/// Declare `n` schedules `burst-00000`… with `spec`, sixteen at a time.
async fn declare_burst(
    store: &Store,
    spec: &faultline::schedule::ScheduleSpec,
    n: usize,
) -> anyhow::Result<()> {
    let names: Vec<String> = (0..n).map(|i| format!("burst-{i:05}")).collect();
    // Sixteen at a time.
    for batch in names.chunks(16) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|name| {
                let (store, spec, name) = (store.clone(), spec.clone(), name.clone());
                tokio::spawn(async move { store.put_schedule(&name, &spec).await })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
    }
    Ok(())
}

/// `n` schedules due in the same second (issue 28): the seconds from that second until every one
/// of their jobs exists, with scheduler passes every 200 ms as the maintainer runs them, and the
/// slots missed (must be 0).
pub async fn schedule_burst(bench: &Bench, n: usize) -> anyhow::Result<(f64, u64)> {
    use faultline::schedule::{Misfire, ScheduleSpec};
    let store = Store::new(bench.pool.clone());
    // Declared with a yearly cron, then all moved to one slot a few seconds ahead in one
    // statement, so that declaring them takes no part of the measured window.
    let spec = ScheduleSpec {
        cron: "0 0 1 1 *".into(),
        kind: "noop".into(),
        payload: json!({}).into(),
        queue: Some("burst".into()),
        priority: None,
        max_attempts: None,
        timezone: None,
        misfire: Some(Misfire::Skip),
        paused: None,
    };
    declare_burst(&store, &spec, n).await?;
    let tenure = uuid::Uuid::new_v4();
    store.fire_schedules_in(tenure).await?;
    let slot: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "with slot as (select date_trunc('second', now()) + interval '3 seconds' as at)
         update faultline.schedules
         set cron = extract(second from (select at from slot))::int || ' * * * * *',
             considered_until = now(), next_run_at = (select at from slot)
         where name like 'burst-%'
         returning (select at from slot)",
    )
    .fetch_one(&bench.pool)
    .await?;
    let mut missed = 0;
    loop {
        let outcome = store.fire_schedules_in(tenure).await?;
        missed += outcome.misfires.iter().map(|m| m.1).sum::<u64>();
        let made: i64 =
            sqlx::query_scalar("select count(*) from faultline.jobs where queue = 'burst'")
                .fetch_one(&bench.pool)
                .await?;
        if made as usize >= n {
            break;
        }
        if chrono::Utc::now() > slot + chrono::Duration::seconds(60) {
            bail!("{made} of {n} schedules fired within 60 s of their slot");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = (chrono::Utc::now() - slot).num_milliseconds() as f64 / 1000.0;
    sqlx::query("delete from faultline.schedules where name like 'burst-%'")
        .execute(&bench.pool)
        .await?;
    Ok((took, missed))
}

async fn drain_prefilled(
    bench: &Bench,
    jobs: usize,
    workers: usize,
    concurrency: u32,
    prefetch: u32,
) -> anyhow::Result<f64> {
    let (concurrency, prefetch) = (concurrency.to_string(), prefetch.to_string());
    let children = (1..=workers)
        .map(|w| {
            bench.worker(
                &format!("bench-{w}"),
                &["--concurrency", &concurrency, "--prefetch", &prefetch],
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let waited = bench
        .wait_for_count("succeeded", jobs as i64, Duration::from_secs(600))
        .await;
    stop(children);
    waited?;
    let seconds: f64 = sqlx::query_scalar(
        "select extract(epoch from max(finished_at) - min(started_at))::float8
         from faultline.job_history",
    )
    .fetch_one(&bench.pool)
    .await?;
    Ok(jobs as f64 / seconds)
}

/// Enqueue → start latency at a fixed offered rate with one worker at concurrency 1:
/// (p50, p95, p99, max) in ms, from database timestamps (one clock).
///
/// The worker runs at concurrency 1 up to 200/s offered (the brief's figure) and at rate/100
/// (at most 64) above, so that it has the capacity the rate needs; each enqueue is sent on its
/// own task at its tick, so a slow one does not lower the offered rate.
///
/// The first second of load (at least 100 jobs) is a warm-up, not measured: the worker process
/// is started with it, and its start-up (pool, LISTEN, election) takes about a tenth of a
/// second, in which early jobs wait. A warm-up of 100 jobs covered that at 200/s but lasted
/// 50 ms at 2,000/s, and the start-up then showed as a 100 ms tail.
pub async fn latency(bench: &Bench, rate: u32, samples: usize) -> anyhow::Result<[f64; 4]> {
    let warmup = (rate as usize).max(100);
    let concurrency = if rate <= 200 {
        1
    } else {
        (rate / 100).clamp(1, 64)
    };
    let child = bench.worker(
        "bench-latency",
        &["--concurrency", &concurrency.to_string()],
    )?;
    let result = async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = tokio::task::JoinSet::new();
        for i in 0..(warmup + samples) {
            tick.tick().await;
            let store = bench.store.clone();
            sent.spawn(async move {
                let job = store
                    .enqueue(NewJob::new("noop", json!({"i": i})))
                    .await?
                    .into_job();
                anyhow::Ok((i, job.id))
            });
        }
        let mut measured: Vec<JobId> = Vec::new();
        while let Some(result) = sent.join_next().await {
            let (i, id) = result??;
            if i >= warmup {
                measured.push(id);
            }
        }
        bench
            .wait_for_count(
                "succeeded",
                (warmup + samples) as i64,
                Duration::from_secs(120),
            )
            .await?;
        let mut ms: Vec<f64> = sqlx::query_scalar(
            "select (extract(epoch from started_at - created_at) * 1000)::float8
             from faultline.all_jobs where id = any($1)",
        )
        .bind(&measured)
        .fetch_all(&bench.pool)
        .await?;
        ms.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
        anyhow::Ok([pct(0.50), pct(0.95), pct(0.99), ms[ms.len() - 1]])
    }
    .await;
    stop(vec![child]);
    result
}

/// SIGKILL the worker holding a job with lease TTL `ttl`; seconds until another worker starts it.
pub async fn recovery(bench: &Bench, ttl: Duration) -> anyhow::Result<f64> {
    let ttl_arg = format!("{}ms", ttl.as_millis());
    let mut children = vec![
        // The leader's term as long as a lease: when the killed worker also led, its reaper's
        // successor is elected about when the lease expires, so the figure does not depend on
        // which of the two was elected.
        bench.worker(
            "bench-a",
            &["--lease-ttl", &ttl_arg, "--leader-ttl", &ttl_arg],
        )?,
        bench.worker(
            "bench-b",
            &["--lease-ttl", &ttl_arg, "--leader-ttl", &ttl_arg],
        )?,
    ];
    let result = async {
        let id = bench
            .store
            .enqueue(NewJob::new("sleep", json!({"ms": 600_000})))
            .await?
            .job()
            .id;
        let owner = loop {
            let job = bench.store.get(id).await?;
            if let Some(owner) = job
                .lease_owner
                .filter(|_| job.state == faultline::JobState::Running)
            {
                break owner;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let victim = if owner == "bench-a" { 0 } else { 1 };
        let _ = kill(Pid::from_raw(children[victim].id() as i32), Signal::SIGKILL);
        let killed = Instant::now();
        let deadline = killed + ttl + Duration::from_secs(30);
        loop {
            let job = bench.store.get(id).await?;
            if job.state == faultline::JobState::Running
                && job.lease_owner.as_deref() != Some(owner.as_str())
            {
                return anyhow::Ok(killed.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("the job was not recovered");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    .await;
    stop(std::mem::take(&mut children));
    result
}

/// Raw Postgres: single-row INSERTs into the job table from `clients` connections.
pub async fn ceiling_insert(
    bench: &Bench,
    clients: usize,
    period: Duration,
) -> anyhow::Result<f64> {
    let url = bench.url.clone();
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Arc::new(tokio::sync::Mutex::new(
            PgConnection::connect(&url).await?,
        )));
    }
    let next = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(conns);
    closed_loop(clients, period, 1, move || {
        let (conns, next) = (conns.clone(), next.clone());
        async move {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize % conns.len();
            let mut conn = conns[i].lock().await;
            sqlx::query(
                "insert into faultline.jobs (id, kind, payload) values ($1, 'noop', '{\"n\": 1}')",
            )
            .bind(uuid::Uuid::now_v7())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    })
    .await
}

/// Raw Postgres: claim 100 with `for update skip locked`, then mark them succeeded, from
/// `clients` connections, over `jobs` pre-inserted rows.
pub async fn ceiling_claim_complete(
    bench: &Bench,
    clients: usize,
    jobs: usize,
) -> anyhow::Result<f64> {
    bench.prefill(jobs).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let url = bench.url.clone();
        tasks.spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            loop {
                let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
                    "with c as (
                        -- The claim index's order (lanes: see the migration `lane_marks`).
                        select id from faultline.jobs
                        where state = 'queued' and queue = 'default' and next_run_at <= now()
                        order by priority, coalesce(eligible_at, next_run_at), next_run_at, id
                        limit 100 for update skip locked)
                     update faultline.jobs j set state = 'running', attempts = j.attempts + 1,
                        lease_owner = 'ceiling', lease_expires_at = now() + interval '30 seconds',
                        lease_token = nextval('faultline.lease_token_seq'), started_at = now()
                     from c where j.id = c.id returning j.id",
                )
                .fetch_all(&mut conn)
                .await?;
                if ids.is_empty() {
                    return anyhow::Ok(());
                }
                // The same move to history as a real completion.
                sqlx::query(
                    "with moved as (delete from faultline.jobs where id = any($1) returning *)
                     insert into faultline.job_history (id, queue, kind, payload, state, priority,
                         attempts, max_attempts, next_run_at, lease_owner, lease_token, created_at,
                         started_at, finished_at, updated_at)
                     select id, queue, kind, payload, 'succeeded', priority, attempts, max_attempts,
                         next_run_at, lease_owner, lease_token, created_at, started_at, now(), now()
                     from moved",
                )
                .bind(&ids)
                .execute(&mut conn)
                .await?;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

/// Raw Postgres on a minimal job table (id, queue, state, run_at, timestamps; one partial
/// index), the same claim-100 + complete shape from `clients` connections: the physical limit
/// of a SKIP LOCKED queue on this server, whatever any queue's own table costs. The same shape
/// as the peers' pgbench ceiling, so the figures compare.
pub async fn ceiling_minimal_table(
    bench: &Bench,
    clients: usize,
    jobs: usize,
) -> anyhow::Result<f64> {
    create_minimal_table(bench, jobs).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        tasks.spawn(drain_minimal_table(bench.url.clone()));
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    sqlx::query("drop table public.bench_minimal_jobs")
        .execute(&bench.pool)
        .await?;
    Ok(rate)
}

/// The minimal queue table, with `jobs` pending rows, vacuumed and checkpointed.
async fn create_minimal_table(bench: &Bench, jobs: usize) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "drop table if exists public.bench_minimal_jobs;
         create table public.bench_minimal_jobs (
             id bigserial primary key,
             queue text not null default 'default',
             payload jsonb not null default '{}',
             state text not null default 'pending',
             run_at timestamptz not null default now(),
             locked_at timestamptz,
             finished_at timestamptz,
             created_at timestamptz not null default now());
         create index bench_minimal_pending on public.bench_minimal_jobs (run_at, id)
             where state = 'pending';",
    )
    .execute(&bench.pool)
    .await?;
    sqlx::query(
        "insert into public.bench_minimal_jobs (payload) select '{}' from generate_series(1, $1)",
    )
    .bind(jobs as i64)
    .execute(&bench.pool)
    .await?;
    // One statement each: several in one simple query run as one transaction, and VACUUM
    // refuses to run inside one.
    sqlx::query("vacuum analyze public.bench_minimal_jobs")
        .execute(&bench.pool)
        .await?;
    let _ = sqlx::query("checkpoint").execute(&bench.pool).await;
    Ok(())
}

/// One client of the minimal-table ceiling: claim 100, complete them, until none is left.
async fn drain_minimal_table(url: String) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&url).await?;
    loop {
        let ids: Vec<i64> = sqlx::query_scalar(
            "with c as (
                select id from public.bench_minimal_jobs
                where state = 'pending' and run_at <= now()
                order by run_at, id limit 100 for update skip locked)
             update public.bench_minimal_jobs j set state = 'running', locked_at = now()
             from c where j.id = c.id returning j.id",
        )
        .fetch_all(&mut conn)
        .await?;
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "update public.bench_minimal_jobs set state = 'succeeded', finished_at = now()
             where id = any($1)",
        )
        .bind(&ids)
        .execute(&mut conn)
        .await?;
    }
}

/// What the backlog phase measured at one backlog.
pub struct BacklogOutcome {
    /// Jobs/s over the first `window` jobs drained.
    pub drain_per_second: f64,
    /// `GET /v1/queues` with the whole backlog queued: median of 5, milliseconds.
    pub queues_ms: f64,
}

/// Drain rate with a `backlog`-job backlog, measured as a deployment runs: the backlog is
/// enqueued over HTTP through `POST /v1/jobs/batch` (1,000 a batch, 2 clients; time-ordered
/// ids, as real enqueues make them), then one worker process × 128 drains the first `window`
/// jobs while a dashboard polls `GET /v1/queues` every 2 s from the same API; jobs/s from the
/// first start to the `window`-th finish (database timestamps).
pub async fn backlog(
    bench: &Bench,
    backlog: u64,
    window: u64,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<BacklogOutcome> {
    let (base, shutdown) = api(bench).await?;
    let http = reqwest::Client::new();
    prefill_over_http(&http, &base, backlog, progress).await?;
    // What autovacuum would have done by now on a server with default settings (the bench's
    // cluster has it, but the prefill outran it).
    progress.set_message(format!("backlog: vacuum analyze of {backlog} jobs"));
    sqlx::query("vacuum analyze faultline.jobs")
        .execute(&bench.pool)
        .await?;
    let _ = sqlx::query("checkpoint").execute(&bench.pool).await;
    let queues = format!("{base}/v1/queues");
    let queues_ms = time_queues(&http, &queues).await?;
    progress.set_message(format!(
        "backlog: draining {window} of {backlog} jobs, /v1/queues polled every 2 s"
    ));
    let waited = drain_polled(bench, window, &http, &queues, &shutdown).await;
    shutdown.cancel();
    waited?;
    Ok(BacklogOutcome {
        drain_per_second: window as f64 / first_window_seconds(bench, window).await?,
        queues_ms,
    })
}

/// Enqueue `backlog` jobs through `POST /v1/jobs/batch` (batches of 1,000, two clients), the
/// progress line showing the rate.
async fn prefill_over_http(
    http: &reqwest::Client,
    base: &str,
    backlog: u64,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let batch = 1000u64;
    let body = serde_json::to_vec(&json!({
        "jobs": (0..batch).map(|i| json!({"kind": "noop", "payload": {"n": i}})).collect::<Vec<_>>()
    }))?;
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (http, url, body, next) = (
            http.clone(),
            format!("{base}/v1/jobs/batch"),
            body.clone(),
            next.clone(),
        );
        clients.spawn(async move {
            while next.fetch_add(batch, Ordering::Relaxed) < backlog {
                let status = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?
                    .status();
                if status.as_u16() != 200 {
                    bail!("POST /v1/jobs/batch answered {status}");
                }
            }
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    loop {
        tokio::select! {
            joined = clients.join_next() => match joined {
                Some(result) => result??,
                None => return Ok(()),
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let sent = next.load(Ordering::Relaxed).min(backlog);
                progress.set_message(format!(
                    "backlog: enqueued about {sent} of {backlog} jobs over HTTP ({:.0}/s)",
                    sent as f64 / started.elapsed().as_secs_f64()
                ));
            }
        }
    }
}

/// The median of five `GET /v1/queues`, in milliseconds.
async fn time_queues(http: &reqwest::Client, queues: &str) -> anyhow::Result<f64> {
    let mut timings = Vec::new();
    for _ in 0..5 {
        let asked = Instant::now();
        let status = http.get(queues).send().await?.status();
        if !status.is_success() {
            bail!("GET /v1/queues answered {status}");
        }
        timings.push(asked.elapsed().as_secs_f64() * 1e3);
    }
    timings.sort_by(f64::total_cmp);
    Ok(timings[timings.len() / 2])
}

/// Drain `window` jobs with one worker × 128 while a dashboard polls `GET /v1/queues` every
/// 2 s.
async fn drain_polled(
    bench: &Bench,
    window: u64,
    http: &reqwest::Client,
    queues: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let dashboard = shutdown.child_token();
    let poller = {
        let (http, stop, queues) = (http.clone(), dashboard.clone(), queues.to_owned());
        tokio::spawn(async move {
            loop {
                let _ = http.get(&queues).send().await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        })
    };
    let child = bench.worker("bench-backlog", &["--concurrency", "128"])?;
    let waited = bench
        .wait_for_count("succeeded", window as i64, Duration::from_secs(900))
        .await;
    stop(vec![child]);
    dashboard.cancel();
    let _ = poller.await;
    waited
}

/// Seconds from the first start to the `window`-th finish, as history records them.
async fn first_window_seconds(bench: &Bench, window: u64) -> anyhow::Result<f64> {
    Ok(sqlx::query_scalar(
        "with first as (
            select finished_at from faultline.job_history order by finished_at limit $1)
         select extract(epoch from (select max(finished_at) from first)
                                 - (select min(started_at) from faultline.job_history))::float8",
    )
    .bind(window as i64)
    .fetch_one(&bench.pool)
    .await?)
}

/// One sample of the soak phase.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SoakSample {
    pub at_seconds: f64,
    /// Whether the pin (an idle transaction holding the MVCC horizon) was held at the sample.
    pub pinned: bool,
    /// Jobs finished per second since the previous sample.
    pub drain_per_second: f64,
    /// Live jobs (queued + running).
    pub backlog: i64,
    /// Size of the live table with its indexes and TOAST.
    pub live_mb: f64,
    pub live_dead_tuples: i64,
    /// Size of every history partition with its indexes.
    pub history_mb: f64,
}

/// What the soak phase measured.
pub struct Soak {
    pub rate: f64,
    pub samples: Vec<SoakSample>,
}

impl Soak {
    /// First minute against last minute: drain rate, live table size, dead tuples.
    pub fn figures(&self) -> Vec<(String, &'static str, f64)> {
        let minute = |from_end: bool| -> Vec<&SoakSample> {
            let n = self.samples.len().min(6);
            if from_end {
                self.samples[self.samples.len() - n..].iter().collect()
            } else {
                self.samples[..n].iter().collect()
            }
        };
        let mean = |samples: &[&SoakSample], f: fn(&SoakSample) -> f64| {
            samples.iter().map(|s| f(s)).sum::<f64>() / samples.len().max(1) as f64
        };
        let (first, last) = (minute(false), minute(true));
        let mut figures = vec![
            ("soak: offered enqueue rate".into(), "jobs/s", self.rate),
            (
                "soak: drain rate, first minute".into(),
                "jobs/s",
                mean(&first, |s| s.drain_per_second),
            ),
            (
                "soak: drain rate, last minute".into(),
                "jobs/s",
                mean(&last, |s| s.drain_per_second),
            ),
            (
                "soak: live table size, first minute".into(),
                "MB",
                mean(&first, |s| s.live_mb),
            ),
            (
                "soak: live table size, last minute".into(),
                "MB",
                mean(&last, |s| s.live_mb),
            ),
            (
                "soak: live dead tuples, last minute".into(),
                "rows",
                mean(&last, |s| s.live_dead_tuples as f64),
            ),
            (
                "soak: history size, last minute".into(),
                "MB",
                mean(&last, |s| s.history_mb),
            ),
        ];
        figures.extend(self.pinned_figures());
        figures
    }

    /// The drain rate and the largest backlog while the horizon was held, if it was.
    fn pinned_figures(&self) -> Vec<(String, &'static str, f64)> {
        let pinned: Vec<&SoakSample> = self.samples.iter().filter(|s| s.pinned).collect();
        if pinned.is_empty() {
            return Vec::new();
        }
        let drain = pinned.iter().map(|s| s.drain_per_second).sum::<f64>() / pinned.len() as f64;
        vec![
            (
                "soak: drain rate while the horizon was held".into(),
                "jobs/s",
                drain,
            ),
            (
                "soak: largest backlog while the horizon was held".into(),
                "jobs",
                pinned.iter().map(|s| s.backlog).max().unwrap_or(0) as f64,
            ),
        ]
    }
}

/// Enqueue and drain for `duration` at half the peak rate (measured first with the same workers
/// on 50,000 jobs), with retention shortened to a fifth of the soak (at least a minute), so that
/// history is retired several times over; sample every 10 s.
pub async fn soak(
    bench: &Bench,
    duration: Duration,
    pin: Duration,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Soak> {
    let retention = format!("{}s", (duration.as_secs() / 5).max(60));
    let args = ["--concurrency", "256", "--retention", retention.as_str()];
    let (children, rate) = soak_peak(bench, &args, progress).await?;
    let halt = tokio_util::sync::CancellationToken::new();
    let enqueuer = paced_enqueuer(bench.store.clone(), rate, halt.clone());
    // The pin: one idle transaction holding an xid through the middle `pin` of the soak (at
    // most a third of it: checked with the flags).
    let mut horizon = Pin {
        from: duration.saturating_sub(pin) / 2,
        length: pin,
        held: None,
        taken: false,
    };
    let mut samples = Vec::new();
    let soak_started = Instant::now();
    let mut last = (Instant::now(), moved_out(bench).await?);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    while soak_started.elapsed() < duration {
        tick.tick().await;
        // This sample covers the last 10 s: pinned if the pin was held through them.
        let was_held = horizon.held.is_some();
        horizon.follow(bench, soak_started.elapsed()).await?;
        let done = moved_out(bench).await?;
        let now = Instant::now();
        let sample = SoakSample {
            pinned: was_held,
            at_seconds: soak_started.elapsed().as_secs_f64(),
            drain_per_second: (done - last.1) as f64 / (now - last.0).as_secs_f64(),
            ..soak_sizes(bench).await?
        };
        progress.set_message(format!(
            "soak: {:.0}s, {:.0} jobs/s, backlog {}, live {:.1} MB, history {:.1} MB",
            sample.at_seconds,
            sample.drain_per_second,
            sample.backlog,
            sample.live_mb,
            sample.history_mb
        ));
        samples.push(sample);
        last = (now, done);
    }
    halt.cancel();
    let _ = enqueuer.await;
    stop(children);
    Ok(Soak { rate, samples })
}

/// Start the soak's two workers on a 50,000-job prefill and measure their peak drain; the soak
/// runs at half of it (at least 100/s).
async fn soak_peak(
    bench: &Bench,
    args: &[&str],
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<std::process::Child>, f64)> {
    progress.set_message("soak: measuring the peak");
    bench.prefill(50_000).await?;
    let started = Instant::now();
    let children = (1..=2)
        .map(|w| bench.worker(&format!("soak-{w}"), args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let waited = bench
        .wait_for_count("succeeded", 50_000, Duration::from_secs(300))
        .await;
    let peak = 50_000.0 / started.elapsed().as_secs_f64();
    waited?;
    Ok((children, (peak / 2.0).max(100.0)))
}

/// The soak's enqueuer: batches of 500 paced to `rate`, until `halt`.
fn paced_enqueuer(
    store: faultline::Store,
    rate: f64,
    halt: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let batch = 500usize;
        let every = Duration::from_secs_f64(batch as f64 / rate);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !halt.is_cancelled() {
            tick.tick().await;
            let jobs = (0..batch).map(|_| NewJob::new("noop", json!({}))).collect();
            let _ = store.enqueue_batch(jobs).await;
        }
    })
}

/// Jobs moved out of the live table so far: monotonic (the finished counts are not, since
/// retention subtracts what it drops), from the statistics every backend flushes at least once
/// a second.
async fn moved_out(bench: &Bench) -> Result<i64, sqlx::Error> {
    let _ = sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&bench.pool)
        .await;
    sqlx::query_scalar::<_, i64>(
        "select n_tup_del from pg_stat_user_tables where relid = 'faultline.jobs'::regclass",
    )
    .fetch_one(&bench.pool)
    .await
}

/// The idle transaction that holds the MVCC horizon through the middle of the soak.
struct Pin {
    from: Duration,
    length: Duration,
    held: Option<sqlx::PgConnection>,
    taken: bool,
}

impl Pin {
    /// Take the pin once `elapsed` reaches its start, release it once its length has passed.
    async fn follow(&mut self, bench: &Bench, elapsed: Duration) -> anyhow::Result<()> {
        if !self.length.is_zero() && self.held.is_none() && !self.taken && elapsed >= self.from {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&bench.url).await?;
            sqlx::query("begin").execute(&mut conn).await?;
            sqlx::query("select txid_current()")
                .execute(&mut conn)
                .await?;
            self.held = Some(conn);
            self.taken = true;
        }
        if elapsed >= self.from + self.length {
            if let Some(mut conn) = self.held.take() {
                sqlx::query("rollback").execute(&mut conn).await?;
            }
        }
        Ok(())
    }
}

/// A soak sample's sizes and backlog (its time, drain and pin are the caller's).
async fn soak_sizes(bench: &Bench) -> anyhow::Result<SoakSample> {
    let (live_bytes, dead, history_bytes): (i64, i64, i64) = sqlx::query_as(
        "select pg_total_relation_size('faultline.jobs'),
                (select n_dead_tup from pg_stat_user_tables
                 where relid = 'faultline.jobs'::regclass),
                (select coalesce(sum(pg_total_relation_size(relid)), 0)::int8
                 from pg_partition_tree('faultline.job_history'))",
    )
    .fetch_one(&bench.pool)
    .await?;
    // From the live counts, as the dashboard reads them (a count of the rows would scan every
    // dead version the pin keeps).
    let backlog = bench
        .store
        .queue_stats()
        .await?
        .iter()
        .map(|q| q.queued + q.running)
        .sum();
    Ok(SoakSample {
        pinned: false,
        at_seconds: 0.0,
        drain_per_second: 0.0,
        backlog,
        live_mb: live_bytes as f64 / 1e6,
        live_dead_tuples: dead,
        history_mb: history_bytes as f64 / 1e6,
    })
}
