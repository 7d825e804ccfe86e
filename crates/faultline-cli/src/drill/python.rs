//! The worker-crash and lease-expiry drills with Python workers (`clients/python/drill/worker.py`,
//! claiming and reporting over the HTTP worker protocol): the same faults, the same guarantees
//! — a job whose Python worker is SIGKILLed is finished by another after its lease expires, the
//! expiry in its history; a Python worker SIGSTOPped past its lease is told to stop when it
//! resumes, its stale token is refused, and the job succeeds once, under the rescuer's lease.

use std::time::{Duration, Instant};

use anyhow::Context;
use faultline::{Job, JobId, JobState};
use nix::sys::signal::Signal;
use serde_json::json;

use super::env::{Env, EnvOptions};
use super::report::{seconds, Report};

/// Two Python workers (and no worker of the binary's), leases of `ttl`.
async fn start(report: &mut Report, ttl: Duration, db: Option<&str>) -> anyhow::Result<Env> {
    let options = EnvOptions {
        workers: 0,
        python_workers: 2,
        lease_ttl: ttl,
        concurrency: 4,
        ..EnvOptions::default()
    };
    Env::start(report, options, db).await
}

/// `drill worker-crash-python`.
pub async fn worker_crash(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(3);
    let env = start(report, ttl, db).await?;
    let id = env
        .enqueue_id(&json!({"kind": "sleep", "payload": {"ms": 4000}}))
        .await?;
    report.event(format!("enqueued sleep 4000ms job {id}"));
    let victim = env.holder(report, id, None).await?;
    let slot = env.slot_of(&victim).context("holder is one of ours")?;
    env.workers[slot].signal(Signal::SIGKILL);
    let killed = Instant::now();
    report.event(format!(
        "SIGKILL {victim} (Python, pid {}) holding job {id}",
        env.workers[slot].pid()
    ));
    let rescuer = env.holder(report, id, Some(&victim)).await?;
    report.event(format!(
        "{rescuer} took job {id} {} after the kill",
        seconds(killed.elapsed())
    ));
    let job = env.terminal(report, id, Duration::from_secs(60)).await?;
    check_rescued(report, &job, &rescuer, &victim);
    let expiry = job
        .errors
        .iter()
        .any(|e| e.reason == "lease_expired" && e.worker.as_deref() == Some(victim.as_str()));
    report.check(
        "the lease expiry is in its error history",
        expiry,
        format!("{} entries", job.errors.len()),
    );
    report.figure("kill → succeeded", seconds(killed.elapsed()));
    Ok(())
}

/// `drill lease-expiry-python`.
pub async fn lease_expiry(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(2);
    let env = start(report, ttl, db).await?;
    // Long enough that the stalled worker's handler is still sleeping when it resumes.
    let id = env
        .enqueue_id(&json!({"kind": "sleep", "payload": {"ms": 12000}}))
        .await?;
    report.event(format!(
        "enqueued sleep 12000ms job {id} (lease TTL {})",
        seconds(ttl)
    ));
    let stalled = env.holder(report, id, None).await?;
    let stale_token = env
        .job(id)
        .await?
        .lease_token
        .context("a running job has a token")?;
    let slot = env.slot_of(&stalled).context("holder is one of ours")?;
    env.workers[slot].signal(Signal::SIGSTOP);
    report.event(format!(
        "SIGSTOP {stalled} (Python) holding job {id} under token {stale_token}"
    ));
    let rescuer = env.holder(report, id, Some(&stalled)).await?;
    report.event(format!("{rescuer} took job {id} over"));
    env.workers[slot].signal(Signal::SIGCONT);
    report.event(format!(
        "SIGCONT {stalled}: its next heartbeat finds the lease lost"
    ));
    let told = told_to_stop(report, &env, slot, id).await;
    report.check(
        "the resumed worker's handler was told to stop (lease lost)",
        told.is_ok(),
        match &told {
            Ok(line) => line.clone(),
            Err(e) => format!("{e}; log tail:\n{}", env.log_tail(&env.workers[slot], 15)),
        },
    );
    let job = env.terminal(report, id, Duration::from_secs(60)).await?;
    check_rescued(report, &job, &rescuer, &stalled);
    late_complete_refused(report, &env, id, stale_token, &job).await?;
    Ok(())
}

/// The job succeeded once, under the rescuer's lease, on its second attempt.
fn check_rescued(report: &mut Report, job: &Job, rescuer: &str, first: &str) {
    report.check(
        "the job succeeded",
        job.state == JobState::Succeeded,
        format!("state {}", job.state),
    );
    report.check(
        "another Python worker finished it",
        job.lease_owner.as_deref() == Some(rescuer) && rescuer != first,
        format!("finished by {}", job.lease_owner.as_deref().unwrap_or("?")),
    );
    report.check(
        "it took exactly one more attempt",
        job.attempts == 2,
        format!("attempts {}", job.attempts),
    );
}

/// Wait for the stalled worker's log to end job `id`'s run stopped for a lost lease.
async fn told_to_stop(
    report: &Report,
    env: &Env,
    slot: usize,
    id: JobId,
) -> anyhow::Result<String> {
    let log = env.workers[slot].log.clone();
    let job = format!("job={id}");
    env.wait_for(
        report,
        "the stalled handler to be stopped",
        Duration::from_secs(30),
        || {
            let (log, job) = (log.clone(), job.clone());
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .find(|l| {
                        l.contains(" end ") && l.contains(&job) && l.contains("reason=lease_lost")
                    })
                    .map(str::to_owned)
            }
        },
    )
    .await
}

/// The stalled worker's complete, sent now with its stale token, is refused and changes
/// nothing.
async fn late_complete_refused(
    report: &mut Report,
    env: &Env,
    id: JobId,
    stale_token: i64,
    done: &Job,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/jobs/{id}/complete", env.api_url);
    let answer = env
        .http
        .post(&url)
        .json(&json!({"lease_token": stale_token, "result": "late"}))
        .send()
        .await?;
    let status = answer.status().as_u16();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    report.check(
        "a complete under the stalled worker's token is refused (409 lease_lost)",
        status == 409 && body["error"]["code"] == "lease_lost",
        format!("{status} {}", body["error"]["code"]),
    );
    let after = env.job(id).await?;
    report.check(
        "the late report changed nothing",
        after.finished_at == done.finished_at
            && after.lease_token == done.lease_token
            && after.result == done.result,
        "finished_at, lease token and result unchanged",
    );
    Ok(())
}
