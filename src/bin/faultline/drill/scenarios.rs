//! The single-fault drills: worker-crash, retries, lease-expiry, db-outage, duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use faultline::{JobId, JobState};
use nix::sys::signal::Signal;
use serde_json::json;

use super::env::{Env, EnvOptions};
use super::report::{seconds, Report};

/// The job's state and lease owner.
async fn state_of(env: &Env, id: JobId) -> Option<(JobState, Option<String>)> {
    let job = env.job(id).await.ok()?;
    Some((job.state, job.lease_owner))
}

/// Wait until `id` runs, and return the worker that holds it.
async fn holder(
    env: &Env,
    report: &Report,
    id: JobId,
    not: Option<&str>,
) -> anyhow::Result<String> {
    env.wait_for(
        report,
        "a worker to run the job",
        Duration::from_secs(60),
        || async {
            match state_of(env, id).await? {
                (JobState::Running, Some(owner)) if Some(owner.as_str()) != not => Some(owner),
                _ => None,
            }
        },
    )
    .await
}

async fn terminal(
    env: &Env,
    report: &Report,
    id: JobId,
    timeout: Duration,
) -> anyhow::Result<faultline::Job> {
    env.wait_for(report, &format!("job {id} to finish"), timeout, || async {
        let job = env.job(id).await.ok()?;
        job.state.is_terminal().then_some(job)
    })
    .await
}

/// Sum of `metric` over every worker that is alive.
async fn workers_metric(env: &mut Env, metric: &str) -> f64 {
    let mut total = 0.0;
    let ports: Vec<u16> = env
        .workers
        .iter_mut()
        .filter_map(|w| w.is_alive().then_some(w.port))
        .collect();
    for port in ports {
        total += env.metric(port, metric).await.unwrap_or(0.0);
    }
    total
}

pub async fn worker_crash(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(3);
    let mut env = Env::start(
        report,
        EnvOptions {
            lease_ttl: ttl,
            ..EnvOptions::default()
        },
        db,
    )
    .await?;
    let id = env
        .enqueue_id(&json!({"kind": "sleep", "payload": {"ms": 4000}}))
        .await?;
    report.event(format!("enqueued sleep 4000ms job {id}"));
    let victim = holder(&env, report, id, None).await?;
    let slot = env.slot_of(&victim).context("holder is one of ours")?;
    let pid = env.workers[slot].pid();
    env.workers[slot].signal(Signal::SIGKILL);
    let killed = Instant::now();
    report.event(format!("SIGKILL {victim} (pid {pid}) holding job {id}"));

    let rescuer = holder(&env, report, id, Some(&victim)).await?;
    let recovered = killed.elapsed();
    report.event(format!(
        "{rescuer} recovered job {id} {} after the kill",
        seconds(recovered)
    ));
    let job = terminal(&env, report, id, Duration::from_secs(60)).await?;
    let finished = killed.elapsed();
    report.event(format!(
        "job {id} {} by {}",
        job.state,
        job.lease_owner.as_deref().unwrap_or("?")
    ));

    report.check(
        "the job succeeded",
        job.state == JobState::Succeeded,
        format!("state {}", job.state),
    );
    report.check(
        "another worker finished it",
        job.lease_owner.as_deref() == Some(rescuer.as_str()) && rescuer != victim,
        format!("finished by {}", job.lease_owner.as_deref().unwrap_or("?")),
    );
    report.check(
        "it took exactly one more attempt",
        job.attempts == 2,
        format!("attempts {}", job.attempts),
    );
    let expiry = job
        .errors
        .iter()
        .any(|e| e.reason == "lease_expired" && e.worker.as_deref() == Some(victim.as_str()));
    report.check(
        "the lease expiry is in its error history",
        expiry,
        format!("{} entries", job.errors.len()),
    );
    let expirations = workers_metric(&mut env, "faultline_lease_expirations_total").await;
    let recoveries = workers_metric(&mut env, "faultline_jobs_recovered_total").await;
    report.check(
        "faultline_lease_expirations_total increased",
        expirations >= 1.0,
        format!("{expirations}"),
    );
    report.check(
        "faultline_jobs_recovered_total increased",
        recoveries >= 1.0,
        format!("{recoveries}"),
    );
    report.figure("lease TTL", seconds(ttl));
    report.figure("kill → recovered by another worker", seconds(recovered));
    report.figure("kill → succeeded", seconds(finished));
    Ok(())
}

pub async fn retries(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let mut env = Env::start(report, EnvOptions::default(), db).await?;
    let flaky = env
        .enqueue_id(&json!({"kind": "fail", "payload": {"times": 3}, "max_attempts": 5}))
        .await?;
    report.event(format!(
        "enqueued fail{{times: 3}} max_attempts 5: job {flaky}"
    ));
    let hopeless = env
        .enqueue_id(&json!({"kind": "fail", "payload": {"times": 99}, "max_attempts": 4}))
        .await?;
    report.event(format!(
        "enqueued fail{{times: 99}} max_attempts 4: job {hopeless}"
    ));
    let a = terminal(&env, report, flaky, Duration::from_secs(60)).await?;
    report.event(format!(
        "job {flaky} {} after {} attempts",
        a.state, a.attempts
    ));
    let b = terminal(&env, report, hopeless, Duration::from_secs(60)).await?;
    report.event(format!(
        "job {hopeless} {} after {} attempts",
        b.state, b.attempts
    ));

    report.check(
        "fail{times: 3} succeeded",
        a.state == JobState::Succeeded,
        format!("state {}", a.state),
    );
    report.check(
        "… on attempt 4",
        a.attempts == 4,
        format!("attempts {}", a.attempts),
    );
    // Gaps between the ends of consecutive attempts: failure → failure, last failure → success.
    let mut ends: Vec<_> = a.errors.iter().map(|e| e.at).collect();
    ends.extend(a.finished_at);
    let gaps: Vec<Duration> = ends
        .windows(2)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .collect();
    // The scheduled delays (from each failure to its retry_at, one database clock) grow by
    // construction of the backoff; the observed gaps add claim and run time on top.
    let delays: Vec<Duration> = a
        .errors
        .iter()
        .filter_map(|e| (e.retry_at? - e.at).to_std().ok())
        .collect();
    let growing = delays.len() == 3 && delays.windows(2).all(|w| w[1] > w[0]);
    let scheduled: Vec<String> = delays.iter().map(|d| seconds(*d)).collect();
    let shown: Vec<String> = gaps.iter().map(|g| seconds(*g)).collect();
    report.check("retry delays grow", growing, scheduled.join(" < "));
    report.check(
        "fail{times: 99} max 4 ended failed",
        b.state == JobState::Failed,
        format!("state {}", b.state),
    );
    report.check(
        "… after exactly 4 attempts",
        b.attempts == 4,
        format!("attempts {}", b.attempts),
    );
    report.check(
        "… with 4 entries in its error history",
        b.errors.len() == 4,
        format!("{} entries", b.errors.len()),
    );
    let retried = workers_metric(&mut env, "faultline_job_retries_total").await;
    let failed = workers_metric(&mut env, "faultline_jobs_failed_total").await;
    report.check(
        "faultline_job_retries_total = 3 + 3",
        retried == 6.0,
        format!("{retried}"),
    );
    report.check(
        "faultline_jobs_failed_total = 1",
        failed == 1.0,
        format!("{failed}"),
    );
    report.figure(
        "scheduled retry delays (base 200ms, equal jitter)",
        scheduled.join(", "),
    );
    report.figure("observed gaps between attempts", shown.join(", "));
    Ok(())
}

pub async fn lease_expiry(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(2);
    let mut env = Env::start(
        report,
        EnvOptions {
            lease_ttl: ttl,
            ..EnvOptions::default()
        },
        db,
    )
    .await?;
    let id = env
        .enqueue_id(&json!({"kind": "sleep", "payload": {"ms": 3000}}))
        .await?;
    report.event(format!(
        "enqueued sleep 3000ms job {id} (lease TTL {})",
        seconds(ttl)
    ));
    let stalled = holder(&env, report, id, None).await?;
    let slot = env.slot_of(&stalled).context("holder is one of ours")?;
    env.workers[slot].signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    report.event(format!(
        "SIGSTOP {stalled} (pid {}) holding job {id}",
        env.workers[slot].pid()
    ));
    let rescuer = holder(&env, report, id, Some(&stalled)).await?;
    report.event(format!(
        "{rescuer} took job {id} {} after the stall",
        seconds(stopped.elapsed())
    ));
    let job = terminal(&env, report, id, Duration::from_secs(60)).await?;
    report.event(format!(
        "job {id} {} by {}",
        job.state,
        job.lease_owner.as_deref().unwrap_or("?")
    ));

    env.workers[slot].signal(Signal::SIGCONT);
    report.event(format!(
        "SIGCONT {stalled}: its handler finishes and reports late"
    ));
    let port = env.workers[slot].port;
    let stale = env
        .wait_for(
            report,
            "the stalled worker's late report to be rejected",
            Duration::from_secs(30),
            || async {
                let stale = env
                    .metric(port, "faultline_stale_completions_total")
                    .await
                    .ok()?;
                (stale >= 1.0).then_some(stale)
            },
        )
        .await;
    let after = env.job(id).await?;
    report.check(
        "the job succeeded",
        job.state == JobState::Succeeded,
        format!("state {}", job.state),
    );
    report.check(
        "its result is the second worker's",
        after.lease_owner.as_deref() == Some(rescuer.as_str())
            && after.state == JobState::Succeeded,
        format!("owner {}", after.lease_owner.as_deref().unwrap_or("?")),
    );
    report.check(
        "the late report changed nothing",
        after.finished_at == job.finished_at && after.lease_token == job.lease_token,
        "finished_at and lease token unchanged",
    );
    report.check(
        "faultline_stale_completions_total ≥ 1 on the stalled worker",
        stale.is_ok(),
        match &stale {
            Ok(v) => format!("{v}"),
            Err(e) => format!("{e}; log tail:\n{}", env.log_tail(&env.workers[slot], 15)),
        },
    );
    let alive = env.workers[slot].is_alive();
    report.check(
        "the stalled worker kept running",
        alive,
        format!("pid {}", env.workers[slot].pid()),
    );
    report.figure("lease TTL", seconds(ttl));
    Ok(())
}

#[derive(Default)]
struct Tally {
    acked: Vec<JobId>,
    by_status: HashMap<u16, u64>,
    transport_errors: u64,
}

pub async fn db_outage(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    if db.is_some() {
        report.skip("DATABASE_URL is set: this drill must stop its own private Postgres");
        return Ok(());
    }
    let mut env = Env::start(
        report,
        EnvOptions {
            lease_ttl: Duration::from_secs(4),
            ..EnvOptions::default()
        },
        db,
    )
    .await?;
    let pids: Vec<u32> = std::iter::once(env.api.pid())
        .chain(env.workers.iter().map(|w| w.pid()))
        .collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let enqueuer = {
        let (tally, stop) = (tally.clone(), stop.clone());
        let http = env.http.clone();
        let url = format!("{}/v1/jobs", env.api_url);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = http
                    .post(&url)
                    .json(&json!({"kind": "sleep", "payload": {"ms": 50}}))
                    .send()
                    .await;
                match sent {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        *tally.lock().unwrap().by_status.entry(status).or_default() += 1;
                        if status == 201 {
                            if let Ok(body) = response.json::<serde_json::Value>().await {
                                if let Some(id) = body["id"].as_str().and_then(|s| s.parse().ok()) {
                                    tally.lock().unwrap().acked.push(id);
                                }
                            }
                        }
                    }
                    Err(_) => tally.lock().unwrap().transport_errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    report.event("enqueueing a job every 25ms through the API");
    tokio::time::sleep(Duration::from_secs(2)).await;

    env.stop_postgres().await?;
    let down = Instant::now();
    report.event("stopped Postgres (immediate mode, as a crash)");
    let saw_503 = env
        .wait_for(
            report,
            "the API to answer 503",
            Duration::from_secs(10),
            || async {
                (tally
                    .lock()
                    .unwrap()
                    .by_status
                    .get(&503)
                    .copied()
                    .unwrap_or(0)
                    > 0)
                .then_some(())
            },
        )
        .await
        .is_ok();
    let health = env
        .http
        .get(format!("{}/health", env.api_url))
        .send()
        .await
        .map(|r| r.status().as_u16());
    let ready = env
        .http
        .get(format!("{}/ready", env.api_url))
        .send()
        .await
        .map(|r| r.status().as_u16());
    report.event(format!(
        "during the outage: /health {:?}, /ready {:?}",
        health.as_ref().ok(),
        ready.as_ref().ok()
    ));
    let remaining = Duration::from_secs(6).saturating_sub(down.elapsed());
    report.waiting("holding the database down");
    tokio::time::sleep(remaining).await;
    env.start_postgres().await?;
    let outage = down.elapsed();
    let up = Instant::now();
    report.event(format!("started Postgres again after {}", seconds(outage)));
    env.wait_for(
        report,
        "the API to accept jobs again",
        Duration::from_secs(30),
        || async {
            let r = env.enqueue(&json!({"kind": "noop"}), None).await.ok()?;
            (r.0 == 201).then_some(())
        },
    )
    .await?;
    let accepting = up.elapsed();
    report.event(format!(
        "API accepting jobs {} after the restart",
        seconds(accepting)
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = enqueuer.await;
    let acked = tally.lock().unwrap().acked.clone();
    report.event(format!(
        "stopped enqueueing; {} jobs were acknowledged",
        acked.len()
    ));
    let all_done = env
        .wait_for(
            report,
            "every acknowledged job to finish",
            Duration::from_secs(90),
            || async {
                let done: i64 = sqlx::query_scalar(
                    "select count(*) from faultline.all_jobs where id = any($1)
                 and state in ('succeeded', 'failed', 'cancelled')",
                )
                .bind(&acked)
                .fetch_one(&env.pool)
                .await
                .ok()?;
                (done as usize == acked.len()).then_some(())
            },
        )
        .await
        .is_ok();
    let recovered = up.elapsed();
    let succeeded: i64 = sqlx::query_scalar(
        "select count(*) from faultline.all_jobs where id = any($1) and state = 'succeeded'",
    )
    .bind(&acked)
    .fetch_one(&env.pool)
    .await?;
    report.event(format!(
        "{succeeded} of {} acknowledged jobs succeeded",
        acked.len()
    ));

    let t = tally.lock().unwrap();
    let count = |s: u16| t.by_status.get(&s).copied().unwrap_or(0);
    let five_hundreds: u64 = t
        .by_status
        .iter()
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .map(|(_, n)| n)
        .sum();
    report.check(
        "the API answered 503 during the outage",
        saw_503,
        format!("{} × 503", count(503)),
    );
    report.check(
        "no 500s (or other 5xx)",
        five_hundreds == 0,
        format!("{five_hundreds}"),
    );
    report.check(
        "the API process kept answering",
        t.transport_errors == 0,
        format!("{} connection errors", t.transport_errors),
    );
    report.check(
        "/health stayed 200",
        matches!(health, Ok(200)),
        format!("{:?}", health.ok()),
    );
    report.check(
        "/ready was 503",
        matches!(ready, Ok(503)),
        format!("{:?}", ready.ok()),
    );
    report.check(
        "every acknowledged job reached a terminal state",
        all_done,
        format!("{} acknowledged", acked.len()),
    );
    report.check(
        "… and succeeded",
        succeeded as usize == acked.len(),
        format!("{succeeded}/{}", acked.len()),
    );
    drop(t);
    let same: Vec<u32> = std::iter::once(env.api.pid())
        .chain(env.workers.iter().map(|w| w.pid()))
        .collect();
    let alive = env.api.is_alive() && env.workers.iter_mut().all(|w| w.is_alive());
    report.check(
        "no API or worker process restarted",
        alive && same == pids,
        format!("pids {pids:?}"),
    );
    report.figure("outage length", seconds(outage));
    report.figure("restart → API accepting jobs", seconds(accepting));
    report.figure(
        "restart → every acknowledged job finished",
        seconds(recovered),
    );
    report.figure("acknowledged jobs", acked.len().to_string());
    Ok(())
}

pub async fn duplicates(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let env = Env::start(report, EnvOptions::default(), db).await?;
    let body = json!({"kind": "noop", "payload": {"order": 42}});
    let post_all = |requests: Vec<(String, serde_json::Value)>| {
        let env = &env;
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (key, body) in requests {
                let http = env.http.clone();
                let url = format!("{}/v1/jobs", env.api_url);
                // As a client should: a 503 (the API could not get a database connection in
                // time under this burst) is retried with the same key until it is answered.
                tasks.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        let r = http
                            .post(&url)
                            .header("idempotency-key", &key)
                            .json(&body)
                            .send()
                            .await;
                        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
                        if !matches!(status, 0 | 503) || Instant::now() >= deadline {
                            return status;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
            }
            let mut statuses: HashMap<u16, usize> = HashMap::new();
            while let Some(status) = tasks.join_next().await {
                *statuses.entry(status.unwrap_or(0)).or_default() += 1;
            }
            statuses
        }
    };
    let one_key: Vec<_> = (0..100)
        .map(|_| ("dup-one".to_owned(), body.clone()))
        .collect();
    let statuses = post_all(one_key).await;
    report.event(format!(
        "100 concurrent submissions with one key: {statuses:?}"
    ));
    let rows: i64 = sqlx::query_scalar(
        "select count(*) from faultline.all_jobs where idempotency_key = 'dup-one'",
    )
    .fetch_one(&env.pool)
    .await?;
    report.check(
        "one key → exactly one job",
        rows == 1,
        format!("{rows} rows"),
    );
    report.check(
        "… one 201 and 99 replays",
        statuses.get(&201) == Some(&1) && statuses.get(&200) == Some(&99),
        format!("{statuses:?}"),
    );

    let many: Vec<_> = (0..10)
        .flat_map(|k| {
            (0..20).map(move |_| {
                (
                    format!("dup-{k}"),
                    json!({"kind": "noop", "payload": {"k": k}}),
                )
            })
        })
        .collect();
    let statuses = post_all(many).await;
    report.event(format!("10 keys × 20 concurrent submissions: {statuses:?}"));
    let per_key: Vec<(String, i64)> = sqlx::query_as(
        "select idempotency_key, count(*) from faultline.all_jobs
         where idempotency_key like 'dup-_' group by 1 order by 1",
    )
    .fetch_all(&env.pool)
    .await?;
    report.check(
        "10 keys → exactly one job each",
        per_key.len() == 10 && per_key.iter().all(|(_, n)| *n == 1),
        format!(
            "{} keys, counts {:?}",
            per_key.len(),
            per_key.iter().map(|(_, n)| n).collect::<Vec<_>>()
        ),
    );
    let (status, reply) = env
        .enqueue(
            &json!({"kind": "noop", "payload": {"order": 43}}),
            Some("dup-one"),
        )
        .await?;
    report.event(format!("different body under a used key: {status}"));
    report.check(
        "a different body under a used key is 409",
        status == 409 && reply["error"]["code"] == "idempotency_conflict",
        format!("{status} {}", reply["error"]["code"]),
    );
    let deduplicated = env
        .metric(env.api_port(), "faultline_jobs_deduplicated_total")
        .await?;
    let enqueued = env
        .metric(env.api_port(), "faultline_jobs_enqueued_total")
        .await?;
    report.check(
        "API metrics: 11 enqueued, 289 deduplicated",
        enqueued == 11.0 && deduplicated == 289.0,
        format!("{enqueued} / {deduplicated}"),
    );
    Ok(())
}
