//! `drill worker-crash`: SIGKILL a worker mid-job; another worker finishes the job after the
//! lease expires, and the expiry is in the job's history.

use std::time::{Duration, Instant};

use anyhow::Context;
use faultline::{Job, JobId, JobState};
use nix::sys::signal::Signal;
use serde_json::json;

use super::env::Env;
use super::report::{seconds, Report};

/// The drill, as its steps: start, enqueue a long job, kill its worker, wait for another to
/// finish it, check the job and the counters, report figures.
pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(3);
    let mut env = Env::start_with_ttl(report, ttl, db).await?;
    let id = env
        .enqueue_id(&json!({"kind": "sleep", "payload": {"ms": 4000}}))
        .await?;
    report.event(format!("enqueued sleep 4000ms job {id}"));
    let kill = Kill::inflict(report, &env, id).await?;
    let recovery = Recovery::wait(report, &env, id, &kill).await?;
    recovery.check_job(report, &kill);
    check_metrics(report, &mut env).await;
    report.figure("lease TTL", seconds(ttl));
    report.figure(
        "kill → recovered by another worker",
        seconds(recovery.recovered),
    );
    report.figure("kill → succeeded", seconds(recovery.finished));
    Ok(())
}

/// The worker killed while it held the job.
struct Kill {
    victim: String,
    killed: Instant,
}

impl Kill {
    /// Wait for a worker to run job `id`, and SIGKILL it.
    async fn inflict(report: &mut Report, env: &Env, id: JobId) -> anyhow::Result<Kill> {
        let victim = env.holder(report, id, None).await?;
        let slot = env.slot_of(&victim).context("holder is one of ours")?;
        let pid = env.workers[slot].pid();
        env.workers[slot].signal(Signal::SIGKILL);
        let killed = Instant::now();
        report.event(format!("SIGKILL {victim} (pid {pid}) holding job {id}"));
        Ok(Kill { victim, killed })
    }
}

/// Another worker taking the job over, and the job as it ended.
struct Recovery {
    rescuer: String,
    /// From the kill until another worker ran the job.
    recovered: Duration,
    job: Job,
    /// From the kill until the job finished.
    finished: Duration,
}

impl Recovery {
    /// Wait for another worker to run job `id`, then for the job to finish.
    async fn wait(
        report: &mut Report,
        env: &Env,
        id: JobId,
        kill: &Kill,
    ) -> anyhow::Result<Recovery> {
        let rescuer = env.holder(report, id, Some(&kill.victim)).await?;
        let recovered = kill.killed.elapsed();
        report.event(format!(
            "{rescuer} recovered job {id} {} after the kill",
            seconds(recovered)
        ));
        let job = env.terminal(report, id, Duration::from_secs(60)).await?;
        let finished = kill.killed.elapsed();
        report.event(format!(
            "job {id} {} by {}",
            job.state,
            job.lease_owner.as_deref().unwrap_or("?")
        ));
        Ok(Recovery {
            rescuer,
            recovered,
            job,
            finished,
        })
    }

    /// The job succeeded on another worker, on its second attempt, with the lease expiry in its
    /// history.
    fn check_job(&self, report: &mut Report, kill: &Kill) {
        let (job, rescuer, victim) = (&self.job, &self.rescuer, &kill.victim);
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
    }
}

/// The counters summed over every live process: a lease expired and a job was recovered.
async fn check_metrics(report: &mut Report, env: &mut Env) {
    let expirations = env
        .metric_everywhere("faultline_lease_expirations_total")
        .await;
    let recoveries = env
        .metric_everywhere("faultline_jobs_recovered_total")
        .await;
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
}
