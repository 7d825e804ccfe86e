//! `drill db-outage`: Postgres is stopped mid-run and restarted; every job acknowledged before
//! and after reaches a terminal state, the API answered 503 (not 500) meanwhile, and no process
//! restarted.

use std::time::{Duration, Instant};

use faultline::{JobId, JobState};
use serde_json::json;

use super::enqueuer::{Enqueuer, Flow};
use super::env::Env;
use super::report::{seconds, Report};

/// The drill, as its steps: start, stream jobs, take Postgres down, bring it back, settle,
/// check, report figures.
pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    if db.is_some() {
        report.skip("DATABASE_URL is set: this drill must stop its own private Postgres");
        return Ok(());
    }
    let mut env = Env::start_with_ttl(report, Duration::from_secs(4), db).await?;
    let pids = env.pids();
    let enqueuer = start_stream(report, &env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = Outage::inflict(report, &env, &enqueuer).await?;
    let restart = Restart::run(report, &env, outage.down).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flow = enqueuer.stop().await;
    let settled = Settled::read(report, &env, &flow, restart.up).await?;
    outage.report(report, &flow);
    settled.report(report);
    report.check(
        "no API or worker process restarted",
        env.same_processes(&pids),
        format!("pids {pids:?}"),
    );
    report_figures(report, &restart, &settled);
    Ok(())
}

/// A keyed 50 ms sleep job through the API every 25 ms.
fn start_stream(report: &mut Report, env: &Env) -> Enqueuer {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let enqueuer = Enqueuer::start(env, Duration::from_millis(25), move |n, _| {
        (
            format!("outage-{run}-{n}"),
            json!({"kind": "sleep", "payload": {"ms": 50}}).into(),
        )
    });
    report.event("enqueueing a job every 25ms through the API");
    enqueuer
}

/// What the API did while Postgres was down.
struct Outage {
    /// When Postgres was stopped.
    down: Instant,
    saw_503: bool,
    /// `/health` and `/ready` during the outage.
    health: Result<u16, reqwest::Error>,
    ready: Result<u16, reqwest::Error>,
}

impl Outage {
    /// Stop Postgres (immediate mode), wait for the API's first 503, probe `/health` and
    /// `/ready`, and hold the database down until 6 s after the stop.
    async fn inflict(report: &mut Report, env: &Env, enqueuer: &Enqueuer) -> anyhow::Result<Self> {
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
        let health = status(env, format!("{}/health", env.api_url)).await;
        let ready = status(env, format!("{}/ready", env.api_url)).await;
        report.event(format!(
            "during the outage: /health {:?}, /ready {:?}",
            health.as_ref().ok(),
            ready.as_ref().ok()
        ));
        let remaining = Duration::from_secs(6).saturating_sub(down.elapsed());
        report.waiting("holding the database down");
        tokio::time::sleep(remaining).await;
        Ok(Outage {
            down,
            saw_503,
            health,
            ready,
        })
    }

    /// The checks on the API's answers during the outage (and the stream's, throughout).
    fn report(self, report: &mut Report, flow: &Flow) {
        report.check(
            "the API answered 503 during the outage",
            self.saw_503,
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
            matches!(self.health, Ok(200)),
            format!("{:?}", self.health.ok()),
        );
        report.check(
            "/ready was 503",
            matches!(self.ready, Ok(503)),
            format!("{:?}", self.ready.ok()),
        );
    }
}

/// The status a GET of `url` answers.
async fn status(env: &Env, url: String) -> Result<u16, reqwest::Error> {
    env.http.get(url).send().await.map(|r| r.status().as_u16())
}

/// Postgres back up, and how long the API took to accept jobs again.
struct Restart {
    /// How long Postgres was down.
    outage: Duration,
    /// When Postgres was started again.
    up: Instant,
    accepting: Duration,
}

impl Restart {
    /// Start Postgres again and wait until the API accepts a job.
    async fn run(report: &mut Report, env: &Env, down: Instant) -> anyhow::Result<Restart> {
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
        Ok(Restart {
            outage,
            up,
            accepting,
        })
    }
}

/// The acknowledged jobs once the stream has stopped and they have had time to finish.
struct Settled {
    acked: Vec<JobId>,
    all_done: bool,
    /// From the restart until every acknowledged job finished (or the wait gave up).
    recovered: Duration,
    succeeded: i64,
}

impl Settled {
    /// Wait for every acknowledged job to finish, and count those that succeeded.
    async fn read(
        report: &mut Report,
        env: &Env,
        flow: &Flow,
        up: Instant,
    ) -> anyhow::Result<Settled> {
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
        Ok(Settled {
            acked,
            all_done,
            recovered,
            succeeded,
        })
    }

    /// The checks that every acknowledged job finished, and succeeded.
    fn report(&self, report: &mut Report) {
        let acked = &self.acked;
        let succeeded = self.succeeded;
        report.check(
            "every acknowledged job reached a terminal state",
            self.all_done,
            format!("{} acknowledged", acked.len()),
        );
        report.check(
            "… and succeeded",
            succeeded as usize == acked.len(),
            format!("{succeeded}/{}", acked.len()),
        );
    }
}

/// The outage's figures: its length, and how long the recovery took.
fn report_figures(report: &mut Report, restart: &Restart, settled: &Settled) {
    report.figure("outage length", seconds(restart.outage));
    report.figure("restart → API accepting jobs", seconds(restart.accepting));
    report.figure(
        "restart → every acknowledged job finished",
        seconds(settled.recovered),
    );
    report.figure("acknowledged jobs", settled.acked.len().to_string());
}
