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

use super::enqueuer::Enqueuer;
use super::env::{Env, EnvOptions};
use super::report::{seconds, Report};

/// How long `--async` holds the primary's WAL sender before the crash.
const LAG: Duration = Duration::from_millis(1500);

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
    let mode = if asynchronous {
        "asynchronous"
    } else {
        "synchronous"
    };

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
            // A standby retries a lost primary every 5 s by default, and a promotion asked for
            // during that wait may sit it out.
            let options = ClusterOptions {
                settings: vec![("wal_retrieve_retry_interval".into(), "100ms".into())],
                ..ClusterOptions::ephemeral()
            };
            move || Cluster::temporary_standby_of(&primary, options)
        })
        .await?,
    );
    let admin = db::connect(&primary.url("postgres"), &db::PoolConfig::default())?;
    wait_streaming(report, &admin, false).await?;
    if !asynchronous {
        sqlx::query("alter system set synchronous_standby_names = '*'")
            .execute(&admin)
            .await?;
        sqlx::query("select pg_reload_conf()")
            .execute(&admin)
            .await?;
        wait_streaming(report, &admin, true).await?;
    }
    report.event(format!(
        "primary on :{} and {mode} standby on :{} (streaming), journal on :{}",
        primary.port().unwrap_or_default(),
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

    let options = EnvOptions {
        workers: 2,
        lease_ttl: Duration::from_secs(3),
        journal: true,
        journal_url: Some(journal_url.clone()),
        bouncer: Some(bouncer.clone()),
        poll_interval: Duration::from_millis(100),
        ..EnvOptions::default()
    };
    let mut env = Env::start(report, options, Some(&primary.url("postgres"))).await?;
    let pids = env.pids();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let enqueuer = Enqueuer::start(&env, Duration::from_millis(20), move |n, _| {
        let body = match n % 10 {
            0 => json!({"kind": "sleep", "payload": {"ms": 2500}}),
            1..=4 => json!({"kind": "sleep", "payload": {"ms": 30}}),
            _ => json!({"kind": "noop"}),
        };
        (format!("failover-{run}-{n}"), body)
    });
    report.event("enqueueing a keyed job every 20ms (a tenth of them 2.5 s long)");
    report.waiting("running before the crash");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Asynchronous replication loses what the standby had not received when the primary died;
    // on one machine it is milliseconds behind, so the drill makes it lag as a loaded network
    // would: the primary's WAL sender is paused for a while before the crash, so what the
    // primary commits meanwhile never leaves it (pausing the receiver would not do: the WAL
    // would wait in the socket buffer and arrive after all).
    let standby_admin = db::connect(&standby.url("postgres"), &db::PoolConfig::default())?;
    if asynchronous {
        let pid: Option<i32> = sqlx::query_scalar("select pid from pg_stat_replication")
            .fetch_optional(&admin)
            .await?;
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP);
            report.event(format!(
                "paused the primary's WAL sender (pid {pid}) for {}: the standby lags",
                seconds(LAG)
            ));
            tokio::time::sleep(LAG).await;
        }
    }
    let succeeded_before: Vec<(JobId, i64)> =
        sqlx::query_as("select id, lease_token from faultline.all_jobs where state = 'succeeded'")
            .fetch_all(&env.pool)
            .await?;
    let acked_before = enqueuer.flow().acked.len();
    let kill_at: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&journal)
        .await?;
    // What the old primary acknowledged (read just above): the jobs it said succeeded, with
    // the accepted token.
    primary.crash();
    let killed = Instant::now();
    report.event(format!(
        "SIGKILL the primary's process group ({acked_before} jobs acknowledged, {} succeeded)",
        succeeded_before.len()
    ));
    blocking({
        let standby = standby.clone();
        move || standby.promote()
    })
    .await?;
    let promoted = killed.elapsed();
    let promoted_at: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&standby_admin)
        .await?;
    bouncer.repoint(BouncerTarget::from_url(&standby.url("postgres"))?)?;
    report.event(format!(
        "promoted the standby {} after the kill; PgBouncer re-pointed (reload)",
        seconds(promoted)
    ));
    let new_url = db::with_database(&standby.url("postgres"), env.database_name());
    env.pool = db::connect(&new_url, &db::PoolConfig::default())?;
    env.store = Store::new(env.pool.clone());
    env.url = new_url;

    env.wait_for(
        report,
        "the API to acknowledge a job after the failover",
        Duration::from_secs(60),
        || async {
            enqueuer
                .flow()
                .acked
                .iter()
                .any(|(_, at)| *at > killed)
                .then_some(())
        },
    )
    .await?;
    let first_ack = enqueuer
        .flow()
        .acked
        .iter()
        .find(|(_, at)| *at > killed)
        .map(|(_, at)| *at - killed)
        .unwrap_or_default();
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
        + promoted;
    report.waiting("running after the failover");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flow = enqueuer.stop().await;
    let acked = flow.ids();

    // Lost: acknowledged, not on the new primary. The rest must all finish.
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
    let settled = env
        .all_finished(report, &present, Duration::from_secs(120))
        .await;
    report.event(format!(
        "{} jobs acknowledged in all; settled: {}",
        acked.len(),
        settled.is_ok()
    ));

    // A success the old primary acknowledged that the new one does not hold (lost, or back to
    // running and run again), and journal runs after an acknowledged success.
    let mut success_lost = 0usize;
    for (id, token) in &succeeded_before {
        let now: Option<(String, Option<i64>)> =
            sqlx::query_as("select state, lease_token from faultline.all_jobs where id = $1")
                .bind(id)
                .fetch_optional(&env.pool)
                .await?;
        if now != Some(("succeeded".to_owned(), Some(*token))) {
            success_lost += 1;
        }
    }
    let (ids, tokens): (Vec<JobId>, Vec<i64>) = succeeded_before.iter().copied().unzip();
    let rerun_after_success: i64 = sqlx::query_scalar(
        "select count(distinct e.job_id) from faultline_drill.executions e
         join unnest($1::uuid[], $2::int8[]) s(id, token) on s.id = e.job_id
         where e.event = 'started' and e.token > s.token",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_one(&journal)
    .await?;
    let (max_before, min_after): (Option<i64>, Option<i64>) = sqlx::query_as(
        "select (select max(token) from faultline_drill.executions
                 where event = 'started' and at < $1),
                (select min(token) from faultline_drill.executions
                 where event = 'started' and at > $1 + $2 * interval '1 millisecond')",
    )
    .bind(kill_at)
    .bind(promoted.as_millis() as f64)
    .fetch_one(&journal)
    .await?;
    let tokens_grow = match (max_before, min_after) {
        (Some(before), Some(after)) => after > before,
        _ => false,
    };

    report.check(
        "every acknowledged job reached a terminal state",
        settled.is_ok(),
        format!("{} present of {} acknowledged", present.len(), acked.len()),
    );
    report.check(
        "no 5xx but 503 from the API",
        flow.unexpected() == 0,
        format!("{} other answers", flow.unexpected()),
    );
    report.check(
        "no API or worker process restarted",
        env.same_processes(&pids),
        format!("pids {pids:?}"),
    );
    let outcomes = [
        (
            "no acknowledged job lost",
            lost.is_empty(),
            format!("{} of {}", lost.len(), acked.len()),
        ),
        (
            "no acknowledged success lost or undone",
            success_lost == 0,
            format!("{success_lost} of {}", succeeded_before.len()),
        ),
        (
            "no job run again after its success was acknowledged",
            rerun_after_success == 0,
            format!("{rerun_after_success}"),
        ),
        (
            "fencing tokens only grow across the failover",
            tokens_grow,
            format!("last before {max_before:?}, first after {min_after:?}"),
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
    report.figure(
        "replication",
        if asynchronous {
            format!("{mode}, standby lagging {} at the crash", seconds(LAG))
        } else {
            mode.to_owned()
        },
    );
    report.figure("kill → standby promoted", seconds(promoted));
    report.figure("kill → first new 201", seconds(first_ack));
    report.figure("kill → first completion", seconds(first_completion));
    report.figure("jobs acknowledged", acked.len().to_string());
    report.figure(
        "enqueue retries after 503 / dropped connection",
        (flow.count(503) + flow.count(0)).to_string(),
    );
    drop(journal_cluster);
    Ok(())
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
