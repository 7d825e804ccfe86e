//! `--only pressure`: the queue under something that holds Postgres's MVCC horizon, phase for
//! phase as the public cross-system harness (`postgresql-job-queue-benchmarking`) runs it:
//! clean → stress → recovery at a fixed offered rate, sampled every 10 s, and the stress ÷
//! clean ratios it publishes.
//!
//! Scenarios: `idle-in-tx` (one session `BEGIN; SELECT txid_current()` left idle through the
//! stress phase), `active-readers` (four REPEATABLE READ sessions scanning the queue's tables
//! in a loop, each in one transaction for the whole phase), `high-load` (1.5 × the offered
//! rate). One worker process (`--concurrency 64`, with the elected maintainer), `noop` jobs
//! enqueued in batches of 100 through the library.

use std::time::{Duration, Instant};

use faultline::NewJob;
use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::phases::{stop_children, Bench};

/// A stress scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One idle transaction holding an xid.
    IdleInTx,
    /// Four REPEATABLE READ readers scanning the tables.
    ActiveReaders,
    /// 1.5 × the offered rate.
    HighLoad,
}

/// One 10-second sample.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The scenario and whether lane marks were on.
    pub run: String,
    /// clean, stress or recovery.
    pub phase: &'static str,
    /// Seconds since the run started.
    pub at_seconds: f64,
    /// Jobs finished per second over the sample.
    pub completions_per_second: f64,
    /// Pickup latency (`started_at - created_at`) of the jobs finished in the sample, ms.
    pub pickup_p50_ms: f64,
    /// Its 99th percentile, ms.
    pub pickup_p99_ms: f64,
    /// Queued jobs at the sample.
    pub backlog: i64,
    /// Dead tuples of the live table (statistics).
    pub live_dead_tuples: i64,
    /// The live table's size with its indexes, MB.
    pub live_mb: f64,
}

impl Sample {
    /// The sample as one line of the text report.
    pub fn line(&self) -> String {
        format!(
            "pressure {}: {:>4.0}s {:<8} {:>7.0} jobs/s  pickup p50 {:>8.1} ms p99 {:>8.1} ms  backlog {:>8}  dead {:>9}  live {:>7.1} MB",
            self.run, self.at_seconds, self.phase, self.completions_per_second,
            self.pickup_p50_ms, self.pickup_p99_ms, self.backlog, self.live_dead_tuples,
            self.live_mb
        )
    }
}

/// What one run measured.
pub struct Outcome {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Median completions/s under stress ÷ clean.
    pub completions_ratio: f64,
    /// Median pickup p99 under stress ÷ clean.
    pub p99_ratio: f64,
    /// The backlog at the end of the stress phase, in seconds of offered load.
    pub backlog_seconds: f64,
    /// Seconds after the release until a sample's p99 was within 1.5 × clean again (the
    /// recovery phase's length when it never was).
    pub recovery_seconds: f64,
}

impl Outcome {
    /// Its figures under `label`, and its samples.
    pub(super) fn record(self, label: &str, rec: &mut super::Recorder) {
        rec.record(
            format!("{label}: completions, stress ÷ clean"),
            "ratio",
            self.completions_ratio,
        );
        rec.record(
            format!("{label}: pickup p99, stress ÷ clean"),
            "ratio",
            self.p99_ratio,
        );
        rec.record(
            format!("{label}: backlog at the end of the stress"),
            "s of offered load",
            self.backlog_seconds,
        );
        rec.record(
            format!("{label}: from the release until p99 is within 1.5 × clean"),
            "s",
            self.recovery_seconds,
        );
        rec.pressure_samples.extend(self.samples);
    }
}

/// The phases' lengths.
#[derive(Clone, Copy, Debug)]
pub struct Lengths {
    /// Before the stress.
    pub clean: Duration,
    /// Under it.
    pub stress: Duration,
    /// After it.
    pub recovery: Duration,
}

/// The worker's arguments.
fn worker_args(marks: bool) -> Vec<&'static str> {
    // The reaper at its default interval: under a held horizon its scan of running jobs is the
    // one maintenance statement whose cost still grows with dead versions (BENCHMARKS.md).
    let mut args = vec!["--concurrency", "64", "--reaper-interval", "1s"];
    if !marks {
        args.push("--no-lane-marks");
    }
    args
}

/// The peak drain of the pressure phases' worker: the default offered rate is half of it.
pub async fn peak(bench: &Bench) -> anyhow::Result<f64> {
    bench.reset().await?;
    let jobs = 30_000;
    bench.prefill(jobs).await?;
    let started = Instant::now();
    let worker = bench.worker("pressure-peak", &worker_args(true))?;
    let waited = bench
        .wait_for_count("succeeded", jobs as i64, Duration::from_secs(300))
        .await;
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    stop_children(vec![worker]);
    waited?;
    Ok(rate)
}

/// Hold the horizon as `scenario` does until `release` is cancelled.
async fn hold(url: String, scenario: Scenario, release: CancellationToken) -> anyhow::Result<()> {
    match scenario {
        Scenario::HighLoad => {
            release.cancelled().await;
            Ok(())
        }
        Scenario::IdleInTx => {
            let mut conn = PgConnection::connect(&url).await?;
            sqlx::query("begin").execute(&mut conn).await?;
            sqlx::query("select txid_current()")
                .execute(&mut conn)
                .await?;
            release.cancelled().await;
            sqlx::query("rollback").execute(&mut conn).await?;
            Ok(())
        }
        Scenario::ActiveReaders => {
            let mut readers = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let (url, release) = (url.clone(), release.clone());
                readers.spawn(async move {
                    let mut conn = PgConnection::connect(&url).await?;
                    sqlx::query("begin isolation level repeatable read")
                        .execute(&mut conn)
                        .await?;
                    while !release.is_cancelled() {
                        sqlx::query("select count(*) from faultline.jobs")
                            .execute(&mut conn)
                            .await?;
                        sqlx::query(
                            "select count(*) from faultline.job_history
                             where finished_at > now() - interval '1 minute'",
                        )
                        .execute(&mut conn)
                        .await?;
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = release.cancelled() => {}
                        }
                    }
                    sqlx::query("commit").execute(&mut conn).await?;
                    anyhow::Ok(())
                });
            }
            while let Some(done) = readers.join_next().await {
                done??;
            }
            Ok(())
        }
    }
}

/// One run: clean → stress → recovery at `rate`, with lane marks on or off.
pub async fn run(
    bench: &Bench,
    scenario: Scenario,
    marks: bool,
    rate: f64,
    lengths: Lengths,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Outcome> {
    bench.reset().await?;
    let name = format!(
        "{}{}",
        serde_json::to_value(scenario)?.as_str().unwrap_or("?"),
        if marks { "" } else { ", lane marks off" }
    );
    let worker = bench.worker("pressure", &worker_args(marks))?;
    let halt = CancellationToken::new();
    let boost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let enqueuer = paced_enqueuer(bench.store.clone(), rate, halt.clone(), boost.clone());
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last = (Instant::now(), finished(bench).await?);
    let mut stress = Stress {
        scenario,
        lengths,
        boost,
        release: CancellationToken::new(),
        holder: None,
    };
    let total = lengths.clean + lengths.stress + lengths.recovery;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    while started.elapsed() < total {
        tick.tick().await;
        let at = started.elapsed();
        let phase = lengths.phase_at(at);
        let sample = sample(bench, &name, phase, at, &mut last).await?;
        let line = sample.line();
        if progress.is_hidden() {
            // Not a terminal (a log, CI): the bar draws nothing, and neither would its println.
            eprintln!("{line}");
        } else {
            progress.println(line);
        }
        samples.push(sample);
        stress.follow(bench, at, phase).await?;
    }
    stress.end().await?;
    halt.cancel();
    let _ = enqueuer.await;
    stop_children(vec![worker]);
    Ok(summarize(samples, rate))
}

impl Lengths {
    /// The phase a sample taken `at` into the run belongs to.
    fn phase_at(&self, at: Duration) -> &'static str {
        if at <= self.clean {
            "clean"
        } else if at <= self.clean + self.stress {
            "stress"
        } else {
            "recovery"
        }
    }
}

/// The enqueuer: batches of 100, paced to `rate`; `boost` multiplies the rate (high-load).
fn paced_enqueuer(
    store: faultline::Store,
    rate: f64,
    halt: CancellationToken,
    boost: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let batch = 100usize;
        let mut next = Instant::now();
        while !halt.is_cancelled() {
            let factor = if boost.load(std::sync::atomic::Ordering::Relaxed) {
                1.5
            } else {
                1.0
            };
            next += Duration::from_secs_f64(batch as f64 / (rate * factor));
            let jobs = (0..batch).map(|_| NewJob::new("noop", json!({}))).collect();
            let _ = store.enqueue_batch(jobs).await;
            tokio::time::sleep_until(next.into()).await;
        }
    })
}

/// The scenario's pressure: started after the clean phase's last sample, released after the
/// stress phase's own.
struct Stress {
    scenario: Scenario,
    lengths: Lengths,
    boost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: CancellationToken,
    holder: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stress {
    /// Start or release the pressure after the sample taken `at`, in `phase`.
    async fn follow(&mut self, bench: &Bench, at: Duration, phase: &str) -> anyhow::Result<()> {
        let next = at + Duration::from_secs(10);
        if self.holder.is_none() && next > self.lengths.clean && phase == "clean" {
            let (release, url) = (self.release.clone(), bench.url.clone());
            self.holder = Some(tokio::spawn(hold(url, self.scenario, release)));
            if self.scenario == Scenario::HighLoad {
                self.boost.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if phase == "stress" && next > self.lengths.clean + self.lengths.stress {
            self.boost
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.end().await?;
        }
        Ok(())
    }

    /// Release the pressure (if held) and wait for its holder.
    async fn end(&mut self) -> anyhow::Result<()> {
        self.release.cancel();
        if let Some(holder) = self.holder.take() {
            holder.await??;
        }
        Ok(())
    }
}

/// Jobs moved out of the live table so far (monotonic, from the statistics).
async fn finished(bench: &Bench) -> anyhow::Result<i64> {
    let _ = sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&bench.pool)
        .await;
    Ok(sqlx::query_scalar::<_, i64>(
        "select n_tup_del from pg_stat_user_tables where relid = 'faultline.jobs'::regclass",
    )
    .fetch_one(&bench.pool)
    .await?)
}

async fn sample(
    bench: &Bench,
    run: &str,
    phase: &'static str,
    at: Duration,
    last: &mut (Instant, i64),
) -> anyhow::Result<Sample> {
    let done = finished(bench).await?;
    let now = Instant::now();
    let completions_per_second = (done - last.1) as f64 / (now - last.0).as_secs_f64();
    *last = (now, done);
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "select percentile_cont(0.5) within group (order by ms),
                percentile_cont(0.99) within group (order by ms)
         from (select extract(epoch from started_at - created_at) * 1000 as ms
               from faultline.job_history
               where finished_at > now() - interval '10 seconds') s",
    )
    .fetch_one(&bench.pool)
    .await?;
    let (backlog, dead, bytes): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from faultline.jobs where state = 'queued'),
                (select n_dead_tup from pg_stat_user_tables
                 where relid = 'faultline.jobs'::regclass),
                pg_total_relation_size('faultline.jobs')",
    )
    .fetch_one(&bench.pool)
    .await?;
    Ok(Sample {
        run: run.to_owned(),
        phase,
        at_seconds: at.as_secs_f64(),
        completions_per_second,
        pickup_p50_ms: p50.unwrap_or(0.0),
        pickup_p99_ms: p99.unwrap_or(0.0),
        backlog,
        live_dead_tuples: dead,
        live_mb: bytes as f64 / 1e6,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn summarize(samples: Vec<Sample>, rate: f64) -> Outcome {
    let of = |phase: &str, f: fn(&Sample) -> f64| -> Vec<f64> {
        samples.iter().filter(|s| s.phase == phase).map(f).collect()
    };
    let clean_rate = median(of("clean", |s| s.completions_per_second));
    let clean_p99 = median(of("clean", |s| s.pickup_p99_ms));
    let stress_rate = median(of("stress", |s| s.completions_per_second));
    let stress_p99 = median(of("stress", |s| s.pickup_p99_ms));
    let last_stress = samples.iter().rev().find(|s| s.phase == "stress");
    let backlog = last_stress.map_or(0, |s| s.backlog);
    let stress_end = last_stress.map_or(0.0, |s| s.at_seconds);
    let recovered = samples
        .iter()
        .filter(|s| s.phase == "recovery")
        .find(|s| s.pickup_p99_ms <= clean_p99 * 1.5)
        .or(samples.last())
        .map_or(0.0, |s| s.at_seconds - stress_end);
    Outcome {
        completions_ratio: stress_rate / clean_rate.max(1e-9),
        p99_ratio: stress_p99 / clean_p99.max(1e-9),
        backlog_seconds: backlog as f64 / rate,
        recovery_seconds: recovered,
        samples,
    }
}
