//! `drill failover` (docs/operations.md): a primary and a streaming standby (synchronous unless
//! `--async`), the API and two workers reaching them through a PgBouncer, a continuous stream of
//! keyed jobs, short and long; then the primary is SIGKILLed with its whole process group (a
//! host crash), the standby promoted, and PgBouncer re-pointed at it (a configuration reload:
//! no process of ours restarts). Checked on the new primary and in an execution journal kept in
//! a third cluster that no fault touches: every acknowledged job exists and finishes, no
//! success acknowledged before the crash is lost or run again, fencing tokens issued after the
//! failover are larger than every token issued before it, and the processes are the same.
//!
//! Why PgBouncer rather than a multi-host URL with `target_session_attrs=read-write`: sqlx's
//! Postgres driver takes one host, so the processes could not follow a promotion by
//! themselves; a pooler in front is also how most deployments fail over. With `--async`, the
//! same checks are reported as figures: asynchronous replication may lose what the primary
//! acknowledged but had not yet shipped, and that loss is the point of the comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use faultline::{db, JobId, Store};
use faultline_pg::{pgbouncer_binary, Bouncer, BouncerOptions, BouncerTarget, Cluster};
use faultline_pg::{ClusterOptions, PgBinaries};
use serde_json::json;
use sqlx::PgPool;

use nix::sys::signal::Signal;

use super::enqueuer::{Enqueuer, Flow};
use super::env::{Env, EnvOptions};
use super::report::{seconds, Report};

/// How long `--async` holds the primary's WAL sender before the crash.
const LAG: Duration = Duration::from_millis(1500);

/// The drill, as its steps: set up, run, crash, fail over, recover, check.
pub async fn run(report: &mut Report, db: Option<&str>, asynchronous: bool) -> anyhow::Result<()> {
    if db.is_some() {
        report.skip("DATABASE_URL is set: this drill must crash and promote servers of its own");
        return Ok(());
    }
    if let Some(missing) = missing_tools() {
        report.skip(format!(
            "{missing} not found (scripts/ensure-postgres and scripts/ensure-pgbouncer install them)"
        ));
        return Ok(());
    }
    let rig = Rig::start(report, asynchronous).await?;
    let mut env = rig.start_env(report).await?;
    let pids = env.pids();
    let enqueuer = start_stream(report, &env);
    report.waiting("running before the crash");
    tokio::time::sleep(Duration::from_secs(4)).await;
    if asynchronous {
        rig.lag_standby(report).await?;
    }
    let before = Before::read(&env, &rig.journal, &enqueuer).await?;
    let failover = rig.crash_and_promote(report, &mut env, &before).await?;
    let timings = wait_recovered(report, &env, &enqueuer, &failover).await?;
    report.waiting("running after the failover");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flow = enqueuer.stop().await;
    let outcome = Outcome::read(report, &env, &rig.journal, &before, &failover, &flow).await?;
    let same = (env.same_processes(&pids), format!("pids {pids:?}"));
    outcome.report(report, asynchronous, same);
    rig.report(report, &failover, &timings, &flow);
    Ok(())
}

/// The servers: a journal cluster no fault touches, a primary, its standby (synchronous unless
/// `--async`), and PgBouncer in front of the primary.
struct Rig {
    asynchronous: bool,
    /// Kept for its lifetime: dropping it stops the journal's server.
    _journal_cluster: Cluster,
    journal_url: String,
    journal: PgPool,
    primary: Arc<Cluster>,
    standby: Arc<Cluster>,
    admin: PgPool,
    bouncer: Arc<Bouncer>,
}

impl Rig {
    async fn start(report: &mut Report, asynchronous: bool) -> anyhow::Result<Rig> {
        report.waiting("starting the journal cluster, the primary and its standby");
        let journal_cluster = blocking(Cluster::temporary).await?;
        let journal_url = journal_cluster.url("postgres");
        let journal = db::connect(&journal_url, &db::PoolConfig::default())?;
        let primary = Arc::new(
            blocking(|| {
                Cluster::temporary_with(ClusterOptions {
                    settings: vec![("wal_keep_size".into(), "256MB".into())],
                    ..ClusterOptions::ephemeral()
                })
            })
            .await?,
        );
        let standby = Arc::new(
            blocking({
                let primary = primary.clone();
                // A standby retries a lost primary every 5 s by default, and a promotion asked
                // for during that wait may sit it out.
                let options = ClusterOptions {
                    settings: vec![("wal_retrieve_retry_interval".into(), "100ms".into())],
                    ..ClusterOptions::ephemeral()
                };
                move || Cluster::temporary_standby_of(&primary, options)
            })
            .await?,
        );
        let admin = db::connect(&primary.url("postgres"), &db::PoolConfig::default())?;
        replicate(report, &admin, asynchronous).await?;
        report.event(format!(
            "primary on :{} and {} standby on :{} (streaming), journal on :{}",
            primary.port().unwrap_or_default(),
            mode(asynchronous),
            standby.port().unwrap_or_default(),
            journal_cluster.port().unwrap_or_default()
        ));
        let bouncer = Arc::new(
            Bouncer::start(
                BouncerTarget::from_url(&primary.url("postgres"))?,
                BouncerOptions::default(),
            )
            .context("start PgBouncer")?,
        );
        report.event(format!(
            "{} (transaction pooling) on :{} in front of the primary",
            bouncer.version(),
            bouncer.port()
        ));
        Ok(Rig {
            asynchronous,
            _journal_cluster: journal_cluster,
            journal_url,
            journal,
            primary,
            standby,
            admin,
            bouncer,
        })
    }

    /// The API and two workers, reaching the primary through PgBouncer, journaling every run.
    async fn start_env(&self, report: &mut Report) -> anyhow::Result<Env> {
        let options = EnvOptions {
            workers: 2,
            lease_ttl: Duration::from_secs(3),
            journal: true,
            journal_url: Some(self.journal_url.clone()),
            bouncer: Some(self.bouncer.clone()),
            poll_interval: Duration::from_millis(100),
            ..EnvOptions::default()
        };
        Env::start(report, options, Some(&self.primary.url("postgres"))).await
    }

    /// Asynchronous replication loses what the standby had not received when the primary died;
    /// on one machine it is milliseconds behind, so the drill makes it lag as a loaded network
    /// would: the primary's WAL sender is paused for a while before the crash, so what the
    /// primary commits meanwhile never leaves it (pausing the receiver would not do: the WAL
    /// would wait in the socket buffer and arrive after all).
    async fn lag_standby(&self, report: &mut Report) -> anyhow::Result<()> {
        let pid: Option<i32> = sqlx::query_scalar("select pid from pg_stat_replication")
            .fetch_optional(&self.admin)
            .await?;
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP);
            report.event(format!(
                "paused the primary's WAL sender (pid {pid}) for {}: the standby lags",
                seconds(LAG)
            ));
            tokio::time::sleep(LAG).await;
        }
        Ok(())
    }

    /// SIGKILL the primary's process group, promote the standby, re-point PgBouncer at it, and
    /// point the drill's own pool at the new primary.
    async fn crash_and_promote(
        &self,
        report: &mut Report,
        env: &mut Env,
        before: &Before,
    ) -> anyhow::Result<Failover> {
        let standby_admin = db::connect(&self.standby.url("postgres"), &db::PoolConfig::default())?;
        self.primary.crash();
        let killed = Instant::now();
        report.event(format!(
            "SIGKILL the primary's process group ({} jobs acknowledged, {} succeeded)",
            before.acked,
            before.succeeded.len()
        ));
        blocking({
            let standby = self.standby.clone();
            move || standby.promote()
        })
        .await?;
        let promoted = killed.elapsed();
        let promoted_at: DateTime<Utc> = sqlx::query_scalar("select now()")
            .fetch_one(&standby_admin)
            .await?;
        self.bouncer
            .repoint(BouncerTarget::from_url(&self.standby.url("postgres"))?)?;
        report.event(format!(
            "promoted the standby {} after the kill; PgBouncer re-pointed (reload)",
            seconds(promoted)
        ));
        let new_url = db::with_database(&self.standby.url("postgres"), env.database_name());
        env.pool = db::connect(&new_url, &db::PoolConfig::default())?;
        env.store = Store::new(env.pool.clone());
        env.url = new_url;
        Ok(Failover {
            killed,
            promoted,
            promoted_at,
        })
    }

    fn report(&self, report: &mut Report, failover: &Failover, timings: &Timings, flow: &Flow) {
        report.figure(
            "replication",
            if self.asynchronous {
                format!(
                    "{}, standby lagging {} at the crash",
                    mode(true),
                    seconds(LAG)
                )
            } else {
                mode(false).to_owned()
            },
        );
        report.figure("kill → standby promoted", seconds(failover.promoted));
        report.figure("kill → first new 201", seconds(timings.first_ack));
        report.figure("kill → first completion", seconds(timings.first_completion));
        report.figure("jobs acknowledged", flow.ids().len().to_string());
        report.figure(
            "enqueue retries after 503 / dropped connection",
            (flow.count(503) + flow.count(0)).to_string(),
        );
    }
}

fn mode(asynchronous: bool) -> &'static str {
    if asynchronous {
        "asynchronous"
    } else {
        "synchronous"
    }
}

/// Wait for the standby to stream, and make it synchronous unless `asynchronous`.
async fn replicate(report: &Report, admin: &PgPool, asynchronous: bool) -> anyhow::Result<()> {
    wait_streaming(report, admin, false).await?;
    if !asynchronous {
        sqlx::query("alter system set synchronous_standby_names = '*'")
            .execute(admin)
            .await?;
        sqlx::query("select pg_reload_conf()")
            .execute(admin)
            .await?;
        wait_streaming(report, admin, true).await?;
    }
    Ok(())
}

/// A continuous stream of keyed jobs through the API: mostly `noop`, some short sleeps, a tenth
/// 2.5 s long (running across the crash).
fn start_stream(report: &mut Report, env: &Env) -> Enqueuer {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let enqueuer = Enqueuer::start(env, Duration::from_millis(20), move |n, _| {
        let body = match n % 10 {
            0 => json!({"kind": "sleep", "payload": {"ms": 2500}}),
            1..=4 => json!({"kind": "sleep", "payload": {"ms": 30}}),
            _ => json!({"kind": "noop"}),
        };
        (format!("failover-{run}-{n}"), body.into())
    });
    report.event("enqueueing a keyed job every 20ms (a tenth of them 2.5 s long)");
    enqueuer
}

/// What the old primary acknowledged just before the crash.
struct Before {
    /// The jobs it said succeeded, with the accepted token.
    succeeded: Vec<(JobId, i64)>,
    acked: usize,
    /// The journal's clock at that moment.
    kill_at: DateTime<Utc>,
}

impl Before {
    async fn read(env: &Env, journal: &PgPool, enqueuer: &Enqueuer) -> anyhow::Result<Before> {
        let succeeded = sqlx::query_as(
            "select id, lease_token from faultline.all_jobs where state = 'succeeded'",
        )
        .fetch_all(&env.pool)
        .await?;
        Ok(Before {
            succeeded,
            acked: enqueuer.flow().acked.len(),
            kill_at: sqlx::query_scalar("select now()")
                .fetch_one(journal)
                .await?,
        })
    }
}

/// When the primary died and the standby took over.
struct Failover {
    killed: Instant,
    promoted: Duration,
    promoted_at: DateTime<Utc>,
}

/// How long after the kill the service answered again.
struct Timings {
    first_ack: Duration,
    first_completion: Duration,
}

/// Wait for the API to acknowledge a job after the failover, and for one to complete on the new
/// primary.
async fn wait_recovered(
    report: &mut Report,
    env: &Env,
    enqueuer: &Enqueuer,
    failover: &Failover,
) -> anyhow::Result<Timings> {
    let killed = failover.killed;
    let first_ack = || {
        enqueuer
            .flow()
            .acked
            .iter()
            .find(|(_, at)| *at > killed)
            .map(|(_, at)| *at - killed)
    };
    let first_ack = env
        .wait_for(
            report,
            "the API to acknowledge a job after the failover",
            Duration::from_secs(60),
            || async { first_ack() },
        )
        .await?;
    let promoted_at = failover.promoted_at;
    let first_completion: Duration = env
        .wait_for(
            report,
            "a job to complete on the new primary",
            Duration::from_secs(60),
            || async {
                let at: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "select min(finished_at) from faultline.all_jobs
                     where state = 'succeeded' and finished_at > $1",
                )
                .bind(promoted_at)
                .fetch_one(&env.pool)
                .await
                .ok()?;
                at.and_then(|at| (at - promoted_at).to_std().ok())
            },
        )
        .await?
        + failover.promoted;
    Ok(Timings {
        first_ack,
        first_completion,
    })
}
/// What the new primary and the journal say once the stream has stopped.
struct Outcome {
    acked: usize,
    /// Acknowledged, not on the new primary.
    lost: usize,
    present: usize,
    settled: bool,
    unexpected: u64,
    /// A success the old primary acknowledged that the new one does not hold (lost, or back
    /// to running and run again).
    success_lost: usize,
    succeeded_before: usize,
    /// Journal runs after an acknowledged success.
    rerun_after_success: i64,
    max_before: Option<i64>,
    min_after: Option<i64>,
}

impl Outcome {
    async fn read(
        report: &mut Report,
        env: &Env,
        journal: &PgPool,
        before: &Before,
        failover: &Failover,
        flow: &Flow,
    ) -> anyhow::Result<Outcome> {
        let acked = flow.ids();
        let lost: Vec<JobId> = sqlx::query_scalar(
            "select a.id from unnest($1::uuid[]) a(id)
             where not exists (select 1 from faultline.all_jobs j where j.id = a.id)",
        )
        .bind(&acked)
        .fetch_all(&env.pool)
        .await?;
        let present: Vec<JobId> = acked
            .iter()
            .filter(|id| !lost.contains(id))
            .copied()
            .collect();
        // The rest must all finish.
        let settled = env
            .all_finished(report, &present, Duration::from_secs(120))
            .await
            .is_ok();
        report.event(format!(
            "{} jobs acknowledged in all; settled: {settled}",
            acked.len(),
        ));
        let (max_before, min_after) = token_bounds(journal, before, failover).await?;
        Ok(Outcome {
            acked: acked.len(),
            lost: lost.len(),
            present: present.len(),
            settled,
            unexpected: flow.unexpected(),
            success_lost: successes_lost(env, before).await?,
            succeeded_before: before.succeeded.len(),
            rerun_after_success: reruns_after_success(journal, before).await?,
            max_before,
            min_after,
        })
    }

    fn report(&self, report: &mut Report, asynchronous: bool, same_processes: (bool, String)) {
        report.check(
            "every acknowledged job reached a terminal state",
            self.settled,
            format!("{} present of {} acknowledged", self.present, self.acked),
        );
        report.check(
            "no 5xx but 503 from the API",
            self.unexpected == 0,
            format!("{} other answers", self.unexpected),
        );
        report.check(
            "no API or worker process restarted",
            same_processes.0,
            same_processes.1,
        );
        let tokens_grow = matches!((self.max_before, self.min_after), (Some(b), Some(a)) if a > b);
        let outcomes = [
            (
                "no acknowledged job lost",
                self.lost == 0,
                format!("{} of {}", self.lost, self.acked),
            ),
            (
                "no acknowledged success lost or undone",
                self.success_lost == 0,
                format!("{} of {}", self.success_lost, self.succeeded_before),
            ),
            (
                "no job run again after its success was acknowledged",
                self.rerun_after_success == 0,
                format!("{}", self.rerun_after_success),
            ),
            (
                "fencing tokens only grow across the failover",
                tokens_grow,
                format!(
                    "last before {:?}, first after {:?}",
                    self.max_before, self.min_after
                ),
            ),
        ];
        for (name, ok, detail) in outcomes {
            if asynchronous {
                // Reported, not enforced: this is what asynchronous replication costs.
                report.figure(
                    name,
                    format!("{} ({detail})", if ok { "yes" } else { "NO" }),
                );
            } else {
                report.check(name, ok, detail);
            }
        }
    }
}

/// Successes acknowledged before the crash that the new primary does not hold as they were.
async fn successes_lost(env: &Env, before: &Before) -> anyhow::Result<usize> {
    let mut lost = 0usize;
    for (id, token) in &before.succeeded {
        let now: Option<(String, Option<i64>)> =
            sqlx::query_as("select state, lease_token from faultline.all_jobs where id = $1")
                .bind(id)
                .fetch_optional(&env.pool)
                .await?;
        if now != Some(("succeeded".to_owned(), Some(*token))) {
            lost += 1;
        }
    }
    Ok(lost)
}

/// Jobs the journal saw start again, under a later token, after their success was acknowledged.
async fn reruns_after_success(journal: &PgPool, before: &Before) -> anyhow::Result<i64> {
    let (ids, tokens): (Vec<JobId>, Vec<i64>) = before.succeeded.iter().copied().unzip();
    Ok(sqlx::query_scalar(
        "select count(distinct e.job_id) from faultline_drill.executions e
         join unnest($1::uuid[], $2::int8[]) s(id, token) on s.id = e.job_id
         where e.event = 'started' and e.token > s.token",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_one(journal)
    .await?)
}

/// The last token a run started with before the kill, and the first after the promotion.
async fn token_bounds(
    journal: &PgPool,
    before: &Before,
    failover: &Failover,
) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    Ok(sqlx::query_as(
        "select (select max(token) from faultline_drill.executions
                 where event = 'started' and at < $1),
                (select min(token) from faultline_drill.executions
                 where event = 'started' and at > $1 + $2 * interval '1 millisecond')",
    )
    .bind(before.kill_at)
    .bind(failover.promoted.as_millis() as f64)
    .fetch_one(journal)
    .await?)
}

/// What the drill needs and this machine lacks, if anything.
fn missing_tools() -> Option<&'static str> {
    if pgbouncer_binary().is_none() {
        return Some("pgbouncer");
    }
    let binaries = PgBinaries::find().ok()?;
    if binaries.tool("pg_basebackup").is_none() {
        return Some("pg_basebackup");
    }
    if binaries.tool("pg_ctl").is_none() {
        return Some("pg_ctl");
    }
    None
}

/// Wait until a standby streams from the primary (and, with `sync`, is synchronous).
async fn wait_streaming(report: &Report, admin: &PgPool, sync: bool) -> anyhow::Result<()> {
    let what = if sync {
        "the standby to be synchronous"
    } else {
        "the standby to stream"
    };
    report.waiting(what);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_replication
             where state = 'streaming' and (not $1 or sync_state = 'sync')",
        )
        .bind(sync)
        .fetch_one(admin)
        .await?;
        if n > 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, faultline_pg::PgError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}
