//! `drill retries`: a job that fails N < max times succeeds after N retries with growing
//! delays; one that always fails ends `failed` after exactly `max_attempts` attempts.

use std::time::Duration;

use faultline::{Job, JobId, JobState};
use serde_json::json;

use super::env::{Env, EnvOptions};
use super::report::{seconds, Report};

/// The drill, as its steps: start, enqueue a flaky and a hopeless job, wait for both to finish,
/// check each, check the counters, report the retry timing.
pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let mut env = Env::start(report, EnvOptions::default(), db).await?;
    let (flaky, hopeless) = enqueue(report, &env).await?;
    let (a, b) = finished(report, &env, flaky, hopeless).await?;
    let backoff = Backoff::read(&a);
    check_flaky(report, &a, &backoff);
    check_hopeless(report, &b);
    check_metrics(report, &mut env).await;
    backoff.report(report);
    Ok(())
}

/// Enqueue a job that fails 3 times of at most 5 attempts, and one that fails 99 times of at
/// most 4: their ids.
async fn enqueue(report: &mut Report, env: &Env) -> anyhow::Result<(JobId, JobId)> {
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
    Ok((flaky, hopeless))
}

/// Wait until both jobs are finished, one after the other, and report how each ended.
async fn finished(
    report: &mut Report,
    env: &Env,
    flaky: JobId,
    hopeless: JobId,
) -> anyhow::Result<(Job, Job)> {
    let a = env.terminal(report, flaky, Duration::from_secs(60)).await?;
    report.event(format!(
        "job {flaky} {} after {} attempts",
        a.state, a.attempts
    ));
    let b = env
        .terminal(report, hopeless, Duration::from_secs(60))
        .await?;
    report.event(format!(
        "job {hopeless} {} after {} attempts",
        b.state, b.attempts
    ));
    Ok((a, b))
}

/// The flaky job's retry timing.
struct Backoff {
    /// The scheduled delays grow, all three of them.
    growing: bool,
    /// The scheduled delays, shown.
    scheduled: Vec<String>,
    /// The observed gaps between attempts, shown.
    shown: Vec<String>,
}

impl Backoff {
    fn read(a: &Job) -> Backoff {
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
        Backoff {
            growing,
            scheduled,
            shown,
        }
    }

    fn report(&self, report: &mut Report) {
        report.figure(
            "scheduled retry delays (base 200ms, equal jitter)",
            self.scheduled.join(", "),
        );
        report.figure("observed gaps between attempts", self.shown.join(", "));
    }
}

/// The flaky job succeeded on attempt 4, after growing delays.
fn check_flaky(report: &mut Report, a: &Job, backoff: &Backoff) {
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
    report.check(
        "retry delays grow",
        backoff.growing,
        backoff.scheduled.join(" < "),
    );
}

/// The hopeless job failed after exactly its 4 attempts, each in its error history.
fn check_hopeless(report: &mut Report, b: &Job) {
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
}

/// The counters summed over every process: 3 + 3 retries, one job failed.
async fn check_metrics(report: &mut Report, env: &mut Env) {
    let retried = env.metric_everywhere("faultline_job_retries_total").await;
    let failed = env.metric_everywhere("faultline_jobs_failed_total").await;
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
}
