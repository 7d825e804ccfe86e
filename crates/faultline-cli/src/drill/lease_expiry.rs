//! `drill lease-expiry`: a worker stalls past its lease (SIGSTOP); another takes the job; the
//! stalled one, resumed, is fenced off (its late result is rejected and counted).

use std::time::{Duration, Instant};

use anyhow::Context;
use faultline::JobState;
use nix::sys::signal::Signal;
use serde_json::json;

use super::env::Env;
use super::report::{seconds, Report};

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
    let stalled = env.holder(report, id, None).await?;
    let slot = env.slot_of(&stalled).context("holder is one of ours")?;
    env.workers[slot].signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    report.event(format!(
        "SIGSTOP {stalled} (pid {}) holding job {id}",
        env.workers[slot].pid()
    ));
    let rescuer = env.holder(report, id, Some(&stalled)).await?;
    report.event(format!(
        "{rescuer} took job {id} {} after the stall",
        seconds(stopped.elapsed())
    ));
    let job = env.terminal(report, id, Duration::from_secs(60)).await?;
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
