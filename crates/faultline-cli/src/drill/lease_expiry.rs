//! `drill lease-expiry`: a worker stalls past its lease (SIGSTOP); another takes the job; the
//! stalled one, resumed, is fenced off (its late result is rejected and counted).

use std::time::{Duration, Instant};

use anyhow::Context;
use faultline::{Job, JobId, JobState};
use nix::sys::signal::Signal;
use serde_json::json;

use super::env::Env;
use super::report::{seconds, Report};

/// The drill, as its steps: start, enqueue a long job, stall its worker, wait for another to
/// finish it, resume the stalled one and wait for its late report to be rejected, check.
pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(2);
    let mut env = Env::start_with_ttl(report, ttl, db).await?;
    let id = env
        .enqueue_id(&json!({"kind": "sleep", "payload": {"ms": 3000}}))
        .await?;
    report.event(format!(
        "enqueued sleep 3000ms job {id} (lease TTL {})",
        seconds(ttl)
    ));
    let stall = Stall::inflict(report, &env, id).await?;
    let (rescuer, job) = rescued(report, &env, id, &stall).await?;
    let stale = stall.resume(report, &env).await;
    let after = env.job(id).await?;
    check_job(report, &job, &after, &rescuer);
    stall.check(report, &mut env, &stale);
    report.figure("lease TTL", seconds(ttl));
    Ok(())
}

/// The worker stopped (SIGSTOP) while it held the job.
struct Stall {
    stalled: String,
    slot: usize,
    stopped: Instant,
}

impl Stall {
    /// Wait for a worker to run job `id`, and SIGSTOP it.
    async fn inflict(report: &mut Report, env: &Env, id: JobId) -> anyhow::Result<Stall> {
        let stalled = env.holder(report, id, None).await?;
        let slot = env.slot_of(&stalled).context("holder is one of ours")?;
        env.workers[slot].signal(Signal::SIGSTOP);
        let stopped = Instant::now();
        report.event(format!(
            "SIGSTOP {stalled} (pid {}) holding job {id}",
            env.workers[slot].pid()
        ));
        Ok(Stall {
            stalled,
            slot,
            stopped,
        })
    }

    /// SIGCONT the stalled worker, and wait until it counts its late report as rejected: the
    /// count, or the timeout.
    async fn resume(&self, report: &mut Report, env: &Env) -> anyhow::Result<f64> {
        env.workers[self.slot].signal(Signal::SIGCONT);
        let stalled = &self.stalled;
        report.event(format!(
            "SIGCONT {stalled}: its handler finishes and reports late"
        ));
        let port = env.workers[self.slot].port;
        env.wait_for(
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
        .await
    }

    /// The stalled worker counted its rejected report, and kept running.
    fn check(&self, report: &mut Report, env: &mut Env, stale: &anyhow::Result<f64>) {
        let slot = self.slot;
        report.check(
            "faultline_stale_completions_total ≥ 1 on the stalled worker",
            stale.is_ok(),
            match stale {
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
    }
}

/// Wait for another worker to run job `id`, then for the job to finish: that worker, and the
/// job as it ended.
async fn rescued(
    report: &mut Report,
    env: &Env,
    id: JobId,
    stall: &Stall,
) -> anyhow::Result<(String, Job)> {
    let rescuer = env.holder(report, id, Some(&stall.stalled)).await?;
    report.event(format!(
        "{rescuer} took job {id} {} after the stall",
        seconds(stall.stopped.elapsed())
    ));
    let job = env.terminal(report, id, Duration::from_secs(60)).await?;
    report.event(format!(
        "job {id} {} by {}",
        job.state,
        job.lease_owner.as_deref().unwrap_or("?")
    ));
    Ok((rescuer, job))
}

/// The job succeeded with the second worker's result, and the late report (`after` it) changed
/// nothing.
fn check_job(report: &mut Report, job: &Job, after: &Job, rescuer: &str) {
    report.check(
        "the job succeeded",
        job.state == JobState::Succeeded,
        format!("state {}", job.state),
    );
    report.check(
        "its result is the second worker's",
        after.lease_owner.as_deref() == Some(rescuer) && after.state == JobState::Succeeded,
        format!("owner {}", after.lease_owner.as_deref().unwrap_or("?")),
    );
    report.check(
        "the late report changed nothing",
        after.finished_at == job.finished_at && after.lease_token == job.lease_token,
        "finished_at and lease token unchanged",
    );
}
