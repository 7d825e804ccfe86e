//! The chaos drill: jobs flow in through the API while a seeded random schedule kills, stalls
//! and restarts workers and restarts Postgres; then the faults stop, the system settles, and
//! invariants are checked over the whole history (the job table and the execution journal).

use faultline::Payload;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use faultline::JobId;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::enqueuer::{Enqueuer, Flow};
use super::env::{Env, EnvOptions};
use super::poison;
use super::report::{seconds, Report};

/// A queue with a concurrency limit of [`LIMIT`], and one whose jobs carry one of [`KEYS`]
/// concurrency keys (key concurrency 1): under every fault, the journal must show no more
/// running at once.
const LIMITED: &str = "chaos-limited";
/// The Python workers' queue (`--python-workers`).
const PYTHON: &str = "chaos-python";
const KEYED: &str = "chaos-keyed";
const LIMIT: usize = 3;
const KEYS: usize = 4;

/// A job of the mix: mostly no-ops, some sleeps that outlive a stall, some that fail first,
/// poison (hostile error texts, misbehaving webhook receivers, payloads that must stay exact),
/// short sleeps on the limited and the keyed queue, transactional credits, durable multi-step
/// jobs (each step a transactional write, a durable sleep after the first), and jobs that depend
/// on one to three of the `recent` jobs (which may still run, or fail, or be done already).
fn job(rng: &mut StdRng, receiver: &str, recent: &[JobId]) -> Payload {
    let body = match rng.gen_range(0..16) {
        15 if !recent.is_empty() => {
            let parents: Vec<JobId> = (0..rng.gen_range(1..=3.min(recent.len())))
                .map(|_| recent[rng.gen_range(0..recent.len())])
                .collect();
            let kind = if rng.gen_bool(0.5) {
                "noop"
            } else {
                "drill_credit"
            };
            json!({"kind": kind, "payload": {"ms": rng.gen_range(0..100)}, "depends_on": parents})
        }
        14 => json!({"kind": "drill_credit", "payload": {"ms": rng.gen_range(0..400)}}),
        12 => json!({"kind": "sleep", "queue": LIMITED, "payload": {"ms": rng.gen_range(50..300)}}),
        13 => json!({"kind": "sleep", "queue": KEYED,
                     "concurrency_key": format!("k{}", rng.gen_range(0..KEYS)),
                     "payload": {"ms": rng.gen_range(50..300)}}),
        0..=3 => json!({"kind": "noop"}),
        4 => json!({"kind": "drill_steps", "payload": {
                "steps": rng.gen_range(1..=4), "ms": rng.gen_range(0..200),
                "sleep_after": 1, "sleep_ms": rng.gen_range(0..800)}}),
        5..=7 => json!({"kind": "sleep", "payload": {"ms": rng.gen_range(50..1500)}}),
        10 | 11 => return poison::job(rng, receiver),
        _ => {
            let max = rng.gen_range(2..=5);
            json!({"kind": "fail", "payload": {"times": rng.gen_range(0..=max)}, "max_attempts": max})
        }
    };
    body.into()
}

/// The drill, as its steps: start, stream jobs, inject faults (with the MVCC horizon held for
/// part of the run), stop and settle, check, report the seed.
pub async fn run(
    report: &mut Report,
    db: Option<&str>,
    duration: Duration,
    seed: Option<u64>,
    python_workers: usize,
) -> anyhow::Result<()> {
    let seed = seed.unwrap_or_else(rand::random);
    report.event(format!(
        "seed {seed} (replay: faultline drill chaos --seed {seed} --duration {})",
        humantime::format_duration(duration)
    ));
    let ttl = Duration::from_secs(2);
    let (mut env, receiver) = start(report, db, ttl, python_workers).await?;
    let enqueuer = start_stream(&env, seed, receiver, python_workers > 0);
    let started = Instant::now();
    let faults = inject_holding_horizon(&mut env, report, seed, duration, ttl).await?;
    let flow = enqueuer.stop().await;
    let (settled, settle_time) =
        stop_and_settle(&mut env, report, &flow, started, duration).await?;
    check(&env, report, &flow, settled, settle_time, faults).await;
    report_seed(report, seed, duration);
    Ok(())
}

/// Three workers journaling every run, on the default, the limited and the keyed queue (their
/// limits set), `python` Python workers on a queue of their own, and the hostile webhook
/// receiver: the environment and the receiver's URL.
async fn start(
    report: &mut Report,
    db: Option<&str>,
    ttl: Duration,
    python: usize,
) -> anyhow::Result<(Env, String)> {
    let options = EnvOptions {
        workers: 3,
        python_workers: python,
        python_queues: Some(vec![PYTHON.into()]),
        lease_ttl: ttl,
        journal: true,
        allow_private_webhooks: true,
        queues: vec!["default".into(), LIMITED.into(), KEYED.into()],
        ..EnvOptions::default()
    };
    let env = Env::start(report, options, db).await?;
    limit_queues(&env).await?;
    let receiver = poison::hostile_receiver().await?;
    report.event(format!("hostile webhook receiver on {receiver}"));
    Ok((env, receiver))
}

/// The seeded mix of [`job`]s through the API, one every 15 ms; with `python`, about one in
/// seven goes to the Python workers' queue instead ([`python_job`], from a second generator, so
/// that the rest of the mix is the same as without).
fn start_stream(env: &Env, seed: u64, receiver: String, python: bool) -> Enqueuer {
    // The flow: enqueue through the API with idempotency keys; a 503 or a dropped connection
    // is retried with the same key (safe by construction), so a job is acknowledged once.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_f10e);
    let mut python_rng = StdRng::seed_from_u64(seed ^ 0x00b7_0a11);
    Enqueuer::start(env, Duration::from_millis(15), move |n, recent| {
        let body = if python && python_rng.gen_bool(0.15) {
            python_job(&mut python_rng)
        } else {
            job(&mut rng, &receiver, recent)
        };
        (format!("chaos-{seed}-{n}"), body)
    })
}

/// A job for the Python workers' queue: the kinds they serve (`noop`, `sleep`, `fail`).
fn python_job(rng: &mut StdRng) -> Payload {
    let body = match rng.gen_range(0..4) {
        0 => json!({"kind": "noop", "queue": PYTHON}),
        1 | 2 => {
            json!({"kind": "sleep", "queue": PYTHON, "payload": {"ms": rng.gen_range(50..1500)}})
        }
        _ => {
            let max = rng.gen_range(2..=5);
            json!({"kind": "fail", "queue": PYTHON, "payload": {"times": rng.gen_range(0..=max)},
                   "max_attempts": max})
        }
    };
    body.into()
}

/// [`inject`] the faults while [`hold_horizon`] pins the MVCC horizon for the middle half of
/// the run; report how long it was held. Returns the faults injected, by kind.
async fn inject_holding_horizon(
    env: &mut Env,
    report: &mut Report,
    seed: u64,
    duration: Duration,
    ttl: Duration,
) -> anyhow::Result<HashMap<&'static str, u64>> {
    // A hostile neighbour too: from a quarter to three quarters of the run, a session holds the
    // MVCC horizon (idle in a transaction that has an xid), so claims and marks run with dead
    // row versions that nothing may remove.
    let pinned = tokio_util::sync::CancellationToken::new();
    let pin = tokio::spawn(hold_horizon(
        env.url.clone(),
        duration / 4,
        duration * 3 / 4,
        pinned.clone(),
    ));
    let faults = inject(env, report, seed, duration, ttl).await;
    pinned.cancel();
    let held = pin.await.unwrap_or_default();
    report.event(format!(
        "the MVCC horizon was held {} in all (idle in transaction)",
        seconds(held)
    ));
    faults
}

/// Once the faults and the stream have stopped: [`settle`], and report how long it took after
/// the faults stopped (the run `started`, lasting `duration`). Whether it settled, and that
/// time.
async fn stop_and_settle(
    env: &mut Env,
    report: &mut Report,
    flow: &Flow,
    started: Instant,
    duration: Duration,
) -> anyhow::Result<(bool, Duration)> {
    let acked = flow.ids();
    report.event(format!(
        "faults stopped; {} jobs acknowledged; settling",
        acked.len()
    ));
    let settled = settle(env, report, &acked).await?;
    if !settled {
        diagnose_unsettled(env, report).await;
    }
    let settle_time = started.elapsed().saturating_sub(duration);
    report.event(format!(
        "settled {} after the faults stopped",
        seconds(settle_time)
    ));
    Ok((settled, settle_time))
}

/// One lane's unsettled jobs: queue, priority, queued, due, below the mark, in no known lane,
/// out of attempts, waiting (all lanes).
type UnsettledLane = (String, i16, i64, i64, i64, i64, i64, i64);

/// What holds the jobs that never finished, for the report: per queue and priority, how many
/// are queued, how many of those are eligible, below their lane's newest mark, locked by some
/// session, or out of attempts; and how many wait on dependencies.
async fn diagnose_unsettled(env: &Env, report: &mut Report) {
    let rows: Result<Vec<UnsettledLane>, _> = sqlx::query_as(
        "select j.queue, j.priority, count(*),
                count(*) filter (where j.next_run_at <= now()),
                count(*) filter (where coalesce(j.eligible_at, j.next_run_at) < m.low),
                count(*) filter (where l.queue is null),
                count(*) filter (where j.attempts >= j.max_attempts),
                (select count(*) from faultline.jobs w where w.state = 'waiting')
         from faultline.jobs j
         left join faultline.lanes l using (queue, priority)
         left join lateral (
             select k.low from faultline.lane_marks k
             where k.queue = j.queue and k.priority = j.priority
             order by k.id desc limit 1
         ) m on true
         where j.state = 'queued'
         group by j.queue, j.priority",
    )
    .fetch_all(&env.pool)
    .await;
    match rows {
        Ok(rows) => {
            for (queue, priority, queued, due, below, unknown, spent, waiting) in rows {
                report.event(format!(
                    "unsettled: queue {queue} priority {priority}: {queued} queued, {due} due,                      {below} below the lane's mark, {unknown} in no known lane, {spent} out                      of attempts; {waiting} waiting in all"
                ));
            }
        }
        Err(e) => report.event(format!("unsettled: could not read why: {e}")),
    }
}

/// The seed as a figure, and how to replay the run when a check failed.
fn report_seed(report: &mut Report, seed: u64, duration: Duration) {
    report.figure("seed", seed.to_string());
    if report.checks.iter().any(|c| !c.passed) {
        report.event(format!(
            "replay this run with: faultline drill chaos --seed {seed} --duration {}",
            humantime::format_duration(duration)
        ));
    }
}

/// Set the limits of the limited queue and the keyed queue (key concurrency 1 is the default,
/// set here to be explicit).
async fn limit_queues(env: &Env) -> anyhow::Result<()> {
    for (queue, body) in [
        (LIMITED, json!({"concurrency_limit": LIMIT})),
        (KEYED, json!({"key_concurrency": 1})),
    ] {
        let url = format!("{}/v1/queues/{queue}", env.api_url);
        let answer = env.http.patch(&url).json(&body).send().await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "PATCH {url}: {}",
            answer.status()
        );
    }
    Ok(())
}

/// The most handler runs open at once on the limited queue, and on any one key of the keyed
/// queue, from the journal. A run lasts from its `started` entry to the first of: its end entry,
/// the reaper taking its attempt back (a stalled worker's handler may go on after its lease was
/// lost, but it no longer holds the slot, and its report is fenced off), its job finishing under
/// its lease. Runs whose end cannot be told (an end entry lost in an outage, never reaped) are
/// left out and counted.
type Time = chrono::DateTime<chrono::Utc>;

/// A run: queue, concurrency key, start, end.
type Run = (String, Option<String>, Time, Option<Time>);

async fn most_at_once(env: &Env) -> anyhow::Result<(usize, usize, usize)> {
    let runs: Vec<Run> = sqlx::query_as(
        "with runs as (
                select e.job_id, e.token, e.attempt,
                       min(e.at) filter (where e.event = 'started') as started,
                       min(e.at) filter (where e.event <> 'started') as ended
                from faultline_drill.executions e
                group by e.job_id, e.token, e.attempt
            )
            select j.queue, j.concurrency_key, r.started,
                   least(r.ended,
                         (select min((x->>'at')::timestamptz)
                          from jsonb_array_elements(j.errors) x
                          where x->>'reason' = 'lease_expired'
                            and (x->>'attempt')::int = r.attempt
                            and (x->>'at')::timestamptz >= r.started),
                         case when j.lease_token = r.token then j.finished_at end) as ended
            from runs r join faultline.all_jobs j on j.id = r.job_id
            where j.queue in ($1, $2) and r.started is not null",
    )
    .bind(LIMITED)
    .bind(KEYED)
    .fetch_all(&env.pool)
    .await?;
    let mut unbounded = 0;
    let mut limited = Vec::new();
    let mut keyed: HashMap<String, Vec<(Time, i32)>> = HashMap::new();
    for (queue, key, started, ended) in runs {
        let Some(ended) = ended else {
            unbounded += 1;
            continue;
        };
        let edges = if queue == LIMITED {
            &mut limited
        } else {
            keyed.entry(key.unwrap_or_default()).or_default()
        };
        edges.push((started, 1));
        edges.push((ended, -1));
    }
    let most = |mut edges: Vec<(Time, i32)>| {
        // An end and a start at the same instant: the end first.
        edges.sort();
        let (mut open, mut most) = (0i32, 0i32);
        for (_, delta) in edges {
            open += delta;
            most = most.max(open);
        }
        most as usize
    };
    let per_key = keyed.into_values().map(most).max().unwrap_or(0);
    Ok((most(limited), per_key, unbounded))
}

/// Hold the horizon from `from` to `until` (after the start) with an idle transaction that has
/// an xid, again after each Postgres restart ends it. Returns how long it was held.
async fn hold_horizon(
    url: String,
    from: Duration,
    until: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Duration {
    use sqlx::Connection;
    let started = Instant::now();
    let mut held = Duration::ZERO;
    tokio::select! {
        _ = tokio::time::sleep(from) => {}
        _ = stop.cancelled() => return held,
    }
    while started.elapsed() < until && !stop.is_cancelled() {
        let pinned = async {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::query("begin").execute(&mut conn).await?;
            sqlx::query("select txid_current()")
                .execute(&mut conn)
                .await?;
            anyhow::Ok(conn)
        }
        .await;
        let since = Instant::now();
        if let Ok(mut conn) = pinned {
            // Until the end of the window, or until a restart ends the session.
            let deadline = until.saturating_sub(started.elapsed());
            let end = tokio::time::sleep(deadline);
            tokio::pin!(end);
            loop {
                tokio::select! {
                    _ = &mut end => break,
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        // A check that does not end the transaction: is the session alive?
                        if sqlx::query("select 1").execute(&mut conn).await.is_err() {
                            break;
                        }
                    }
                }
            }
            held += since.elapsed();
            let _ = sqlx::query("rollback").execute(&mut conn).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    held
}

/// The seeded schedule of faults, until `duration` has passed: kill and restart a worker,
/// stall one past its lease, or (with a private cluster) restart Postgres. Returns what was
/// injected, by kind.
async fn inject(
    env: &mut Env,
    report: &mut Report,
    seed: u64,
    duration: Duration,
    ttl: Duration,
) -> anyhow::Result<HashMap<&'static str, u64>> {
    let restart_db = env.cluster.is_some();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: HashMap<&'static str, u64> = HashMap::new();
    let started = Instant::now();
    report.waiting("injecting faults");
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3500))).await;
        let slot = rng.gen_range(0..env.workers.len());
        let name = env.workers[slot].name.clone();
        match rng.gen_range(0..if restart_db { 3 } else { 2 }) {
            0 => {
                let pid = env.workers[slot].pid();
                env.workers[slot].signal(Signal::SIGKILL);
                report.event(format!("SIGKILL {name} (pid {pid})"));
                tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
                let pid = env.restart_worker(slot)?;
                report.event(format!("restarted {name} (pid {pid})"));
                *faults.entry("worker killed and restarted").or_default() += 1;
            }
            1 => {
                env.workers[slot].signal(Signal::SIGSTOP);
                let stall = ttl + Duration::from_millis(rng.gen_range(200..2000));
                report.event(format!("SIGSTOP {name} for {}", seconds(stall)));
                tokio::time::sleep(stall).await;
                env.workers[slot].signal(Signal::SIGCONT);
                report.event(format!("SIGCONT {name}"));
                *faults.entry("worker stalled past its lease").or_default() += 1;
            }
            _ => {
                env.stop_postgres().await?;
                let down = Duration::from_millis(rng.gen_range(1000..3000));
                report.event(format!(
                    "Postgres stopped (immediate) for {}",
                    seconds(down)
                ));
                tokio::time::sleep(down).await;
                env.start_postgres().await?;
                report.event("Postgres started");
                *faults.entry("Postgres restarted").or_default() += 1;
            }
        }
    }
    Ok(faults)
}

/// Every worker continued and alive again; then wait until every acknowledged job finished.
async fn settle(env: &mut Env, report: &Report, acked: &[JobId]) -> anyhow::Result<bool> {
    for worker in &env.workers {
        worker.signal(Signal::SIGCONT);
    }
    for slot in 0..env.workers.len() {
        if !env.workers[slot].is_alive() {
            env.restart_worker(slot)?;
        }
    }
    Ok(env
        .all_finished(report, acked, Duration::from_secs(180))
        .await
        .is_ok())
}

/// The invariants, over the job table and the execution journal: read, then reported.
async fn check(
    env: &Env,
    report: &mut Report,
    flow: &Flow,
    settled: bool,
    settle_time: Duration,
    faults: HashMap<&'static str, u64>,
) {
    let acked = flow.ids();
    let counts = Counts::read(env, &acked).await;
    let (most_limited, most_per_key, unbounded) =
        most_at_once(env)
            .await
            .unwrap_or((usize::MAX, usize::MAX, 0));
    let exact = exact_payloads(env, flow).await;
    report.check(
        "the system settled",
        settled,
        format!("{} after the faults", seconds(settle_time)),
    );
    counts.report_jobs(report, acked.len(), exact);
    counts.report_dependencies(report);
    report.check(
        "a concurrency limit held (journal)",
        most_limited <= LIMIT,
        format!("at most {most_limited} of {LIMITED} running at once (limit {LIMIT}); {unbounded} runs without a known end left out"),
    );
    report.check(
        "a key's concurrency held (journal)",
        most_per_key <= 1,
        format!("at most {most_per_key} of one key running at once (key concurrency 1)"),
    );
    report.check(
        "no 5xx but 503 from the API",
        flow.unexpected() == 0,
        format!("{} other errors", flow.unexpected()),
    );
    let violations = counts.violations(exact.0)
        + usize::from(most_limited > LIMIT)
        + usize::from(most_per_key > 1);
    report.figure("jobs acknowledged", acked.len().to_string());
    report.figure("jobs by state", format!("{:?}", counts.by_state));
    report.figure("faults injected", format!("{faults:?}"));
    report.figure(
        "enqueue retries after 503 / dropped connection",
        (flow.count(503) + flow.count(0)).to_string(),
    );
    report.figure(
        "jobs started more than once (retries and redeliveries)",
        counts.reruns.to_string(),
    );
    report.figure(
        "late successes rejected by fencing",
        counts.fenced_successes.to_string(),
    );
    report.figure("invariant violations", violations.to_string());
}

/// Counts over the acknowledged jobs, each from one query (-1 when the query failed).
#[derive(Default)]
struct Counts {
    lost: i64,
    stuck: i64,
    over: i64,
    bad_failures: i64,
    after_success: i64,
    accepted_twice: i64,
    fenced_successes: i64,
    reruns: i64,
    credits_wrong: i64,
    credits_stale: i64,
    credit_jobs: i64,
    steps_wrong: i64,
    step_jobs: i64,
    waiting_on_finished: i64,
    ran_early: i64,
    wrong_outcome: i64,
    dependents: Vec<(String, i64)>,
    by_state: Vec<(String, i64)>,
}

/// `sql` (one `$1`: the acknowledged ids) as a count, or -1 when it fails.
async fn count(env: &Env, acked: &[JobId], sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .bind(acked)
        .fetch_one(&env.pool)
        .await
        .unwrap_or(-1)
}

/// `sql` (one `$1`: the acknowledged ids) as (state, count) rows, or none when it fails.
async fn states(env: &Env, acked: &[JobId], sql: &'static str) -> Vec<(String, i64)> {
    sqlx::query_as(sql)
        .bind(acked)
        .fetch_all(&env.pool)
        .await
        .unwrap_or_default()
}

impl Counts {
    async fn read(env: &Env, acked: &[JobId]) -> Counts {
        let mut c = Counts::default();
        c.read_jobs(env, acked).await;
        c.read_journal(env, acked).await;
        c.read_credits(env, acked).await;
        c.read_steps(env, acked).await;
        c.read_dependencies(env, acked).await;
        c.by_state = states(
            env,
            acked,
            "select state, count(*) from faultline.all_jobs where id = any($1) group by 1 order by 1",
        )
        .await;
        c
    }

    /// Lost, stuck, over budget, failures without one error per attempt.
    async fn read_jobs(&mut self, env: &Env, acked: &[JobId]) {
        self.lost = count(env, acked, "select count(*) from unnest($1::uuid[]) a(id) where not exists (select 1 from faultline.all_jobs j where j.id = a.id)").await;
        self.stuck = count(env, acked, "select count(*) from faultline.all_jobs where id = any($1) and state not in ('succeeded', 'failed', 'cancelled')").await;
        self.over = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs where id = any($1) and attempts > max_attempts",
        )
        .await;
        self.bad_failures = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs where id = any($1) and state = 'failed'
             and (jsonb_array_length(errors) <> max_attempts or attempts <> max_attempts)",
        )
        .await;
    }

    /// What the execution journal says about claims and successes.
    async fn read_journal(&mut self, env: &Env, acked: &[JobId]) {
        // A claim after the job succeeded would carry a larger token than the accepted one.
        self.after_success = count(
            env,
            acked,
            "select count(*) from faultline_drill.executions e join faultline.all_jobs j on j.id = e.job_id
             where j.id = any($1) and j.state = 'succeeded' and e.token > j.lease_token",
        )
        .await;
        self.accepted_twice = count(
            env,
            acked,
            "select count(*) from (select j.id from faultline.all_jobs j
               join faultline_drill.executions e on e.job_id = j.id and e.event = 'succeeded'
               where j.id = any($1) and j.state = 'succeeded' and e.token = j.lease_token
               group by j.id having count(*) > 1) x",
        )
        .await;
        self.fenced_successes = count(
            env,
            acked,
            "select count(*) from faultline_drill.executions e join faultline.all_jobs j on j.id = e.job_id
             where j.id = any($1) and e.event = 'succeeded' and e.token <> j.lease_token",
        )
        .await;
        self.reruns = count(
            env,
            acked,
            "select count(*) from (select job_id from faultline_drill.executions
               where job_id = any($1) and event = 'started' group by job_id
               having count(distinct token) > 1) x",
        )
        .await;
    }

    /// Transactional completions: a succeeded credit job wrote exactly one row, under the token
    /// it succeeded with; any other job of the kind none (a failed attempt rolled back).
    async fn read_credits(&mut self, env: &Env, acked: &[JobId]) {
        self.credits_wrong = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs j
             where j.id = any($1) and j.kind = 'drill_credit'
               and (select count(*) from faultline_drill.credits c where c.job_id = j.id)
                   <> case when j.state = 'succeeded' then 1 else 0 end",
        )
        .await;
        self.credits_stale = count(
            env,
            acked,
            "select count(*) from faultline_drill.credits c join faultline.all_jobs j on j.id = c.job_id
             where j.id = any($1) and c.token <> j.lease_token",
        )
        .await;
        self.credit_jobs = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs where id = any($1) and kind = 'drill_credit'",
        )
        .await;
    }

    /// Durable steps: every step's row written exactly once, under the token that recorded
    /// the step (a holder that lost its lease rolled its row back with its refused record);
    /// a succeeded job has every step's row.
    async fn read_steps(&mut self, env: &Env, acked: &[JobId]) {
        self.steps_wrong = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs j
             where j.id = any($1) and j.kind = 'drill_steps'
               and (exists (select 1 from faultline_drill.step_rows r
                            where r.job_id = j.id group by r.step having count(*) > 1)
                    or exists (select 1 from faultline_drill.step_rows r
                               left join faultline.job_steps s
                                 on s.job_id = r.job_id and s.name = 's' || r.step
                               where r.job_id = j.id and s.lease_token is distinct from r.token)
                    or (j.state = 'succeeded'
                        and (select count(*) from faultline_drill.step_rows r where r.job_id = j.id)
                            <> (j.payload ->> 'steps')::int))",
        )
        .await;
        self.step_jobs = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs where id = any($1) and kind = 'drill_steps'",
        )
        .await;
    }

    /// Dependencies: no job left waiting once its dependencies are all finished (none of them
    /// live), none run before every dependency succeeded, and each dependent's outcome follows
    /// its dependencies' (succeeded only after all succeeded; cancelled only for a failed or
    /// cancelled one: nothing else cancels in this drill).
    async fn read_dependencies(&mut self, env: &Env, acked: &[JobId]) {
        self.waiting_on_finished = count(
            env,
            acked,
            "select count(*) from faultline.jobs j
             where j.id = any($1) and j.state = 'waiting'
               and not exists (select 1 from unnest(j.depends_on) p(id)
                               join faultline.jobs l on l.id = p.id)",
        )
        .await;
        self.ran_early = count(
            env,
            acked,
            "select count(*) from faultline_drill.executions e
             join faultline.all_jobs c on c.id = e.job_id
             cross join lateral unnest(c.depends_on) p(id)
             left join faultline.all_jobs pj on pj.id = p.id
             where c.id = any($1) and e.event = 'started'
               and (pj.state is distinct from 'succeeded' or e.at < pj.finished_at)",
        )
        .await;
        self.wrong_outcome = count(
            env,
            acked,
            "select count(*) from faultline.all_jobs c
             where c.id = any($1) and cardinality(c.depends_on) > 0 and (
                 (c.state = 'succeeded' and exists (
                     select 1 from unnest(c.depends_on) p(id)
                     left join faultline.all_jobs pj on pj.id = p.id
                     where pj.state is distinct from 'succeeded'))
              or (c.state = 'cancelled' and not exists (
                     select 1 from unnest(c.depends_on) p(id)
                     join faultline.all_jobs pj on pj.id = p.id
                     where pj.state in ('failed', 'cancelled'))))",
        )
        .await;
        self.dependents = states(
            env,
            acked,
            "select state, count(*) from faultline.all_jobs
             where id = any($1) and cardinality(depends_on) > 0 group by 1 order by 1",
        )
        .await;
    }

    fn report_jobs(&self, report: &mut Report, acked: usize, (changed, exact): (i64, usize)) {
        let c = self;
        report.check(
            "no acknowledged job lost",
            c.lost == 0,
            format!("{} of {acked}", c.lost),
        );
        report.check(
            "no job stuck (every acknowledged job terminal)",
            c.stuck == 0,
            format!("{}", c.stuck),
        );
        report.check(
            "no job ran past max_attempts",
            c.over == 0,
            format!("{}", c.over),
        );
        report.check(
            "no claim of a job after it succeeded",
            c.after_success == 0,
            format!("{}", c.after_success),
        );
        report.check(
            "no job succeeded twice",
            c.accepted_twice == 0,
            format!(
                "{}; {} late successes fenced off",
                c.accepted_twice, c.fenced_successes
            ),
        );
        report.check(
            "every failed job has exactly max_attempts error entries",
            c.bad_failures == 0,
            format!("{} violations", c.bad_failures),
        );
        report.check(
            "every payload stored exactly as sent (big numbers, \\u0000, key order)",
            changed == 0,
            format!("{changed} of {exact} changed"),
        );
        report.check(
            "no application row written twice (transactional completion)",
            c.credits_wrong == 0 && c.credits_stale == 0,
            format!(
                "{} of {} jobs without exactly one row per success; {} rows under a stale token",
                c.credits_wrong, c.credit_jobs, c.credits_stale
            ),
        );
        report.check(
            "every durable step's row written once, under the token that recorded it",
            c.steps_wrong == 0,
            format!("{} of {} multi-step jobs wrong", c.steps_wrong, c.step_jobs),
        );
    }

    fn report_dependencies(&self, report: &mut Report) {
        report.check(
            "no job waiting on dependencies that all finished",
            self.waiting_on_finished == 0,
            format!("{}", self.waiting_on_finished),
        );
        report.check(
            "no dependent ran before its dependencies succeeded (journal)",
            self.ran_early == 0,
            format!("{} runs", self.ran_early),
        );
        report.check(
            "every dependent's outcome follows its dependencies'",
            self.wrong_outcome == 0,
            format!(
                "{} of the dependents {:?}",
                self.wrong_outcome, self.dependents
            ),
        );
    }

    /// How many of the invariants were broken (`changed_payloads` counted with them).
    fn violations(&self, changed_payloads: i64) -> usize {
        [
            self.lost,
            self.stuck,
            self.over,
            self.after_success,
            self.accepted_twice,
            self.bad_failures,
            changed_payloads,
            self.credits_wrong,
            self.credits_stale,
            self.steps_wrong,
            self.waiting_on_finished,
            self.ran_early,
            self.wrong_outcome,
        ]
        .iter()
        .filter(|v| **v != 0)
        .count()
    }
}

/// Of the payloads sent to be kept exactly, how many are stored otherwise, and how many there
/// were.
async fn exact_payloads(env: &Env, flow: &Flow) -> (i64, usize) {
    let exact: Vec<(JobId, String)> = flow
        .bodies
        .iter()
        .filter(|(_, body)| poison::is_exact(body))
        .map(|(id, body)| (*id, poison::payload_text(body)))
        .collect();
    let mut changed = 0i64;
    for (id, sent) in &exact {
        let stored: Option<String> =
            sqlx::query_scalar("select payload::text from faultline.all_jobs where id = $1")
                .bind(id)
                .fetch_optional(&env.pool)
                .await
                .unwrap_or(None);
        if stored.as_deref() != Some(sent.as_str()) {
            changed += 1;
        }
    }
    (changed, exact.len())
}
