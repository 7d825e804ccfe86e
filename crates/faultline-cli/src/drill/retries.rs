//! `drill retries`: a job that fails N < max times succeeds after N retries with growing
//! delays; one that always fails ends `failed` after exactly `max_attempts` attempts.

use std::time::Duration;

use faultline::JobState;
use serde_json::json;

use super::env::{Env, EnvOptions};
use super::report::{seconds, Report};

pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
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
    report.figure(
        "scheduled retry delays (base 200ms, equal jitter)",
        scheduled.join(", "),
    );
    report.figure("observed gaps between attempts", shown.join(", "));
    Ok(())
}
