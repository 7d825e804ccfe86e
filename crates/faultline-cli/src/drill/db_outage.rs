//! `drill db-outage`: Postgres is stopped mid-run and restarted; every job acknowledged before
//! and after reaches a terminal state, the API answered 503 (not 500) meanwhile, and no process
//! restarted.

use std::time::{Duration, Instant};

use faultline::JobState;
use serde_json::json;

use super::enqueuer::Enqueuer;
use super::env::Env;
use super::report::{seconds, Report};

pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    if db.is_some() {
        report.skip("DATABASE_URL is set: this drill must stop its own private Postgres");
        return Ok(());
    }
    let mut env = Env::start_with_ttl(report, Duration::from_secs(4), db).await?;
    let pids = env.pids();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let enqueuer = Enqueuer::start(&env, Duration::from_millis(25), move |n, _| {
        (
            format!("outage-{run}-{n}"),
            json!({"kind": "sleep", "payload": {"ms": 50}}).into(),
        )
    });
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
            || async { (enqueuer.flow().count(503) > 0).then_some(()) },
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
    let flow = enqueuer.stop().await;
    let acked = flow.ids();
    report.event(format!(
        "stopped enqueueing; {} jobs were acknowledged",
        acked.len()
    ));
    let all_done = env
        .all_finished(report, &acked, Duration::from_secs(90))
        .await
        .is_ok();
    let recovered = up.elapsed();
    let succeeded = env.count_in(&acked, JobState::Succeeded).await?;
    report.event(format!(
        "{succeeded} of {} acknowledged jobs succeeded",
        acked.len()
    ));

    report.check(
        "the API answered 503 during the outage",
        saw_503,
        format!("{} × 503", flow.count(503)),
    );
    report.check(
        "no 500s (or other 5xx)",
        flow.unexpected() == 0,
        format!("{}", flow.unexpected()),
    );
    report.check(
        "the API process kept answering",
        flow.count(0) == 0,
        format!("{} connection errors", flow.count(0)),
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
    report.check(
        "no API or worker process restarted",
        env.same_processes(&pids),
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
