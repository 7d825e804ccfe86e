//! The chaos drill: jobs flow in through the API while a seeded random schedule kills, stalls
//! and restarts workers and restarts Postgres; then the faults stop, the system settles, and
//! invariants are checked over the whole history (the job table and the execution journal).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline::JobId;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::env::{Env, EnvOptions};
use super::poison;
use super::report::{seconds, Report};

#[derive(Default)]
struct Flow {
    acked: Vec<JobId>,
    /// Jobs whose stored payload text must equal the text sent.
    exact: Vec<(JobId, String)>,
    attempts: u64,
    unavailable: u64,
    server_errors: u64,
}

/// A job of the mix: mostly no-ops, some sleeps that outlive a stall, some that fail first, and
/// poison (hostile error texts, misbehaving webhook receivers, payloads that must stay exact).
fn job(rng: &mut StdRng, receiver: &str) -> Value {
    match rng.gen_range(0..12) {
        0..=4 => json!({"kind": "noop"}),
        5..=7 => json!({"kind": "sleep", "payload": {"ms": rng.gen_range(50..1500)}}),
        10 | 11 => poison::job(rng, receiver),
        _ => {
            let max = rng.gen_range(2..=5);
            json!({"kind": "fail", "payload": {"times": rng.gen_range(0..=max)}, "max_attempts": max})
        }
    }
}

pub async fn run(
    report: &mut Report,
    db: Option<&str>,
    duration: Duration,
    seed: Option<u64>,
) -> anyhow::Result<()> {
    let seed = seed.unwrap_or_else(rand::random);
    report.event(format!(
        "seed {seed} (replay: faultline drill chaos --seed {seed} --duration {})",
        humantime::format_duration(duration)
    ));
    let ttl = Duration::from_secs(2);
    let options = EnvOptions {
        workers: 3,
        lease_ttl: ttl,
        journal: true,
        allow_private_webhooks: true,
        ..EnvOptions::default()
    };
    let mut env = Env::start(report, options, db).await?;
    let receiver = poison::hostile_receiver().await?;
    report.event(format!("hostile webhook receiver on {receiver}"));
    let restart_db = env.cluster.is_some();

    // The flow: enqueue through the API with idempotency keys; a 503 or a dropped connection
    // is retried with the same key (safe by construction), so a job is acknowledged once.
    let flow = Arc::new(Mutex::new(Flow::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let enqueuer = {
        let (flow, stop) = (flow.clone(), stop.clone());
        let http = env.http.clone();
        let url = format!("{}/v1/jobs", env.api_url);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_f10e);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (key, body) = (format!("chaos-{seed}-{n}"), job(&mut rng, &receiver));
                loop {
                    flow.lock().unwrap().attempts += 1;
                    let sent = http
                        .post(&url)
                        .header("idempotency-key", &key)
                        .json(&body)
                        .send()
                        .await;
                    let status = sent.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                    if status == 200 || status == 201 {
                        let reply: Value = sent.unwrap().json().await.unwrap_or(Value::Null);
                        if let Some(id) = reply["id"].as_str().and_then(|s| s.parse().ok()) {
                            let mut flow = flow.lock().unwrap();
                            flow.acked.push(id);
                            if poison::is_exact(&body) {
                                flow.exact.push((id, body["payload"].to_string()));
                            }
                        }
                        break;
                    }
                    {
                        let mut f = flow.lock().unwrap();
                        if status == 503 || status == 0 {
                            f.unavailable += 1;
                        } else {
                            f.server_errors += 1;
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    // The faults.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: HashMap<&str, u64> = HashMap::new();
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
    stop.store(true, Ordering::Relaxed);
    let _ = enqueuer.await;
    for worker in &env.workers {
        worker.signal(Signal::SIGCONT);
    }
    for slot in 0..env.workers.len() {
        if !env.workers[slot].is_alive() {
            env.restart_worker(slot)?;
        }
    }
    let acked = flow.lock().unwrap().acked.clone();
    report.event(format!(
        "faults stopped; {} jobs acknowledged; settling",
        acked.len()
    ));

    let settled = env
        .wait_for(
            report,
            "every acknowledged job to finish",
            Duration::from_secs(180),
            || async {
                let open: i64 = sqlx::query_scalar(
                    "select count(*) from faultline.all_jobs where id = any($1)
                 and state not in ('succeeded', 'failed', 'cancelled')",
                )
                .bind(&acked)
                .fetch_one(&env.pool)
                .await
                .ok()?;
                (open == 0).then_some(())
            },
        )
        .await;
    let settle_time = started.elapsed().saturating_sub(duration);
    report.event(format!(
        "settled {} after the faults stopped",
        seconds(settle_time)
    ));

    // The invariants.
    let count = |sql: &'static str| {
        let pool = env.pool.clone();
        let acked = acked.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(&acked)
                .fetch_one(&pool)
                .await
                .unwrap_or(-1)
        }
    };
    let lost = count("select count(*) from unnest($1::uuid[]) a(id) where not exists (select 1 from faultline.all_jobs j where j.id = a.id)").await;
    let stuck = count("select count(*) from faultline.all_jobs where id = any($1) and state not in ('succeeded', 'failed', 'cancelled')").await;
    let over = count(
        "select count(*) from faultline.all_jobs where id = any($1) and attempts > max_attempts",
    )
    .await;
    let bad_failures = count(
        "select count(*) from faultline.all_jobs where id = any($1) and state = 'failed'
         and (jsonb_array_length(errors) <> max_attempts or attempts <> max_attempts)",
    )
    .await;
    // A claim after the job succeeded would carry a larger token than the accepted one.
    let after_success = count(
        "select count(*) from faultline_drill.executions e join faultline.all_jobs j on j.id = e.job_id
         where j.id = any($1) and j.state = 'succeeded' and e.token > j.lease_token",
    )
    .await;
    let accepted_twice = count(
        "select count(*) from (select j.id from faultline.all_jobs j
           join faultline_drill.executions e on e.job_id = j.id and e.event = 'succeeded'
           where j.id = any($1) and j.state = 'succeeded' and e.token = j.lease_token
           group by j.id having count(*) > 1) x",
    )
    .await;
    let fenced_successes = count(
        "select count(*) from faultline_drill.executions e join faultline.all_jobs j on j.id = e.job_id
         where j.id = any($1) and e.event = 'succeeded' and e.token <> j.lease_token",
    )
    .await;
    let reruns = count(
        "select count(*) from (select job_id from faultline_drill.executions
           where job_id = any($1) and event = 'started' group by job_id
           having count(distinct token) > 1) x",
    )
    .await;
    let exact = flow.lock().unwrap().exact.clone();
    let mut changed_payloads = 0i64;
    for (id, sent) in &exact {
        let stored: Option<String> =
            sqlx::query_scalar("select payload::text from faultline.all_jobs where id = $1")
                .bind(id)
                .fetch_optional(&env.pool)
                .await
                .unwrap_or(None);
        if stored.as_deref() != Some(sent.as_str()) {
            changed_payloads += 1;
        }
    }
    let by_state: Vec<(String, i64)> = sqlx::query_as(
        "select state, count(*) from faultline.all_jobs where id = any($1) group by 1 order by 1",
    )
    .bind(&acked)
    .fetch_all(&env.pool)
    .await
    .unwrap_or_default();

    let f = flow.lock().unwrap();
    report.check(
        "the system settled",
        settled.is_ok(),
        format!("{} after the faults", seconds(settle_time)),
    );
    report.check(
        "no acknowledged job lost",
        lost == 0,
        format!("{lost} of {}", acked.len()),
    );
    report.check(
        "no job stuck (every acknowledged job terminal)",
        stuck == 0,
        format!("{stuck}"),
    );
    report.check("no job ran past max_attempts", over == 0, format!("{over}"));
    report.check(
        "no claim of a job after it succeeded",
        after_success == 0,
        format!("{after_success}"),
    );
    report.check(
        "no job succeeded twice",
        accepted_twice == 0,
        format!("{accepted_twice}; {fenced_successes} late successes fenced off"),
    );
    report.check(
        "every failed job has exactly max_attempts error entries",
        bad_failures == 0,
        format!("{bad_failures} violations"),
    );
    report.check(
        "every payload stored exactly as sent (big numbers, \\u0000, key order)",
        changed_payloads == 0,
        format!("{changed_payloads} of {} changed", exact.len()),
    );
    report.check(
        "no 5xx but 503 from the API",
        f.server_errors == 0,
        format!("{} other errors", f.server_errors),
    );
    let violations = [
        lost,
        stuck,
        over,
        after_success,
        accepted_twice,
        bad_failures,
        changed_payloads,
    ]
    .iter()
    .filter(|v| **v != 0)
    .count();
    report.figure("seed", seed.to_string());
    report.figure("jobs acknowledged", acked.len().to_string());
    report.figure("jobs by state", format!("{by_state:?}"));
    report.figure("faults injected", format!("{faults:?}"));
    report.figure(
        "enqueue retries after 503 / dropped connection",
        f.unavailable.to_string(),
    );
    report.figure(
        "jobs started more than once (retries and redeliveries)",
        reruns.to_string(),
    );
    report.figure(
        "late successes rejected by fencing",
        fenced_successes.to_string(),
    );
    report.figure("invariant violations", violations.to_string());
    if violations > 0 || settled.is_err() {
        report.event(format!(
            "replay this run with: faultline drill chaos --seed {seed} --duration {}",
            humantime::format_duration(duration)
        ));
    }
    Ok(())
}
