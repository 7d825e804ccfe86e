//! `faultline bench`: enqueue, drain, latency and recovery, each beside the raw-Postgres
//! ceiling of the same SQL shape measured in the same run. Before each phase the job table is
//! truncated and vacuumed; each figure is the median of `--runs`, with min and max.

mod phases;
mod pressure;

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use phases::Bench;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run for CI (10,000 jobs per drain, 2 s phases, one run).
    #[arg(long)]
    pub quick: bool,

    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,

    /// Runs per figure (median reported); default 3, 1 with --quick.
    #[arg(long)]
    pub runs: Option<usize>,

    /// Offered rate, jobs/s: of the latency phase (default 200) and of the pressure phase
    /// (default half the peak drain of its worker, measured in the same run).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate: Option<u32>,

    /// The pressure phase's scenarios, comma-separated (default all three).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub pressure_scenarios: Vec<pressure::Scenario>,

    /// The pressure phase's clean, stress and recovery lengths (default 60s,180s,90s).
    #[arg(long, value_delimiter = ',', value_parser = crate::args::duration, num_args = 1..)]
    pub pressure_phases: Vec<Duration>,

    /// Run each pressure scenario twice, lane marks off (claims from the head of the index,
    /// as before marks) then on, and report both.
    #[arg(long)]
    pub pressure_compare: bool,

    /// Jobs per drain; default 100,000, 10,000 with --quick.
    #[arg(long)]
    pub jobs: Option<usize>,

    /// Benchmark this server (a fresh database is created) instead of a private cluster.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Phases to run, comma-separated: enqueue, drain, latency, recovery, backlog, soak,
    /// dependents (default: the first four).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Phase>,

    /// Drain configurations as WORKERSxCONCURRENCY[+PREFETCH], comma-separated (default
    /// 1x8,1x32,1x128,2x8,2x32,2x128,2x512,2x1024+1024,2x256+256; 1x16,2x32 with --quick).
    #[arg(long, value_delimiter = ',', value_parser = drain_config)]
    pub sweep: Vec<(usize, u32, u32)>,

    /// The backlog phase: drain rate at a 100,000-job backlog and at this one, each enqueued
    /// over HTTP and drained while `GET /v1/queues` is polled every 2 s.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(100_000..=100_000_000))]
    pub backlog: u64,

    /// The soak phase's length.
    #[arg(long, default_value = "30m", value_parser = crate::args::duration)]
    pub soak: Duration,

    /// How long an idle transaction holds the MVCC horizon in the middle of the soak (`0s`:
    /// none); at most a third of `--soak`.
    #[arg(long, default_value = "5m", value_parser = crate::args::duration)]
    pub soak_pin: Duration,

    /// Give the benchmark's queue this concurrency limit (all workers together), to measure
    /// what a limited queue costs (`none`: unlimited, the default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    pub concurrency_limit: Option<i32>,
}

/// A phase of the benchmark (`--only`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Enqueue rates (one per call, HTTP, bulk) beside the raw INSERT ceiling.
    Enqueue,
    /// Drain sweeps beside the raw claim + complete ceilings (own table and a minimal one).
    Drain,
    /// Enqueue → start latency at a fixed offered rate.
    Latency,
    /// Time to recover a crashed worker's job.
    Recovery,
    /// Drain rate at a 100k and at a `--backlog` backlog.
    Backlog,
    /// Enqueue and drain at half the peak rate for `--soak`, with a short retention: table
    /// sizes, dead tuples and the drain rate sampled every 10 s.
    Soak,
    /// The drain of jobs half of which wait for the other half (one dependency each), beside
    /// the same drain without dependencies, alternated in one run (the last `--sweep` entry);
    /// then dependency work at the limits (a dense batch, 10,000 dependents settled at once).
    Dependents,
    /// 10,000 schedules due in the same second: how long until every one has its job.
    Schedules,
    /// Clean → stress → recovery at a fixed offered rate while something holds the MVCC
    /// horizon (`--pressure-scenarios`, `--pressure-phases`, `--pressure-compare`).
    Pressure,
}

/// `--pressure-phases`: three lengths, each at least one 10 s sample and at most a day.
fn pressure_lengths(given: &[Duration]) -> anyhow::Result<pressure::Lengths> {
    let lengths = match given {
        [] => pressure::Lengths {
            clean: Duration::from_secs(60),
            stress: Duration::from_secs(180),
            recovery: Duration::from_secs(90),
        },
        [clean, stress, recovery] => pressure::Lengths {
            clean: *clean,
            stress: *stress,
            recovery: *recovery,
        },
        _ => anyhow::bail!(
            "--pressure-phases takes three lengths, clean,stress,recovery (got {})",
            given.len()
        ),
    };
    let range = Duration::from_secs(10)..=Duration::from_secs(24 * 3600);
    for length in [lengths.clean, lengths.stress, lengths.recovery] {
        anyhow::ensure!(
            range.contains(&length),
            "--pressure-phases: each length is 10s to 1d (a sample is taken every 10 s), got {}",
            humantime::format_duration(length)
        );
    }
    Ok(lengths)
}

#[derive(Debug, Serialize)]
struct Figure {
    name: String,
    unit: &'static str,
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
    /// The ceiling this figure is compared with, and the percentage reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    percent_of_ceiling: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Results {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    soak_samples: Vec<phases::SoakSample>,
    /// Every 10 s sample of the pressure phase (printed as it runs, too).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pressure_samples: Vec<pressure::Sample>,
    server: String,
    cores: usize,
    runs: usize,
    jobs_per_drain: usize,
    figures: Vec<Figure>,
}

/// `2x128`: two worker processes at concurrency 128; `2x128+64`: each also prefetching 64.
fn drain_config(text: &str) -> Result<(usize, u32, u32), String> {
    let (text, prefetch) = match text.split_once('+') {
        Some((head, prefetch)) => (
            head,
            prefetch
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 10_000)
                .ok_or_else(|| format!("prefetch must be 0 to 10000, got {prefetch:?}"))?,
        ),
        None => (text, 0),
    };
    let (workers, concurrency) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WORKERSxCONCURRENCY such as 2x128, got {text:?}"))?;
    let workers: usize = workers
        .parse()
        .ok()
        .filter(|w| (1..=16).contains(w))
        .ok_or_else(|| format!("workers must be 1 to 16, got {workers:?}"))?;
    let concurrency: u32 = concurrency
        .parse()
        .ok()
        .filter(|c| (1..=10_000).contains(c))
        .ok_or_else(|| format!("concurrency must be 1 to 10000, got {concurrency:?}"))?;
    Ok((workers, concurrency, prefetch))
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// What a run measures, fixed before anything starts: every flag checked, every default applied.
struct Plan {
    runs: usize,
    jobs: usize,
    period: Duration,
    samples: usize,
    recovery_ttl: Duration,
    sweep: Vec<(usize, u32, u32)>,
    rate: Option<u32>,
    backlog: u64,
    soak: Duration,
    soak_pin: Duration,
    pressure_lengths: pressure::Lengths,
    pressure_scenarios: Vec<pressure::Scenario>,
    pressure_compare: bool,
    phases: Vec<Phase>,
}

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Plan> {
        // Checked before anything starts (a cluster, a peak measurement).
        let pressure_lengths = pressure_lengths(&args.pressure_phases)?;
        anyhow::ensure!(
            args.soak_pin <= args.soak / 3,
            "--soak-pin {} is longer than a third of --soak {}",
            humantime::format_duration(args.soak_pin),
            humantime::format_duration(args.soak)
        );
        let quick = args.quick;
        Ok(Plan {
            runs: args.runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
            jobs: args.jobs.unwrap_or(if quick { 10_000 } else { 100_000 }),
            period: Duration::from_secs(if quick { 2 } else { 5 }),
            samples: if quick { 200 } else { 1000 },
            recovery_ttl: Duration::from_secs(if quick { 2 } else { 5 }),
            sweep: if !args.sweep.is_empty() {
                args.sweep.clone()
            } else if quick {
                vec![(1, 16, 0), (2, 32, 0)]
            } else {
                DEFAULT_SWEEP.to_vec()
            },
            rate: args.rate,
            backlog: args.backlog,
            soak: args.soak,
            soak_pin: args.soak_pin,
            pressure_lengths,
            pressure_scenarios: if args.pressure_scenarios.is_empty() {
                vec![
                    pressure::Scenario::IdleInTx,
                    pressure::Scenario::ActiveReaders,
                    pressure::Scenario::HighLoad,
                ]
            } else {
                args.pressure_scenarios.clone()
            },
            pressure_compare: args.pressure_compare,
            // In the order of the table, whatever the order given.
            phases: PHASES
                .into_iter()
                .filter(|p| {
                    if args.only.is_empty() {
                        DEFAULT_PHASES.contains(p)
                    } else {
                        args.only.contains(p)
                    }
                })
                .collect(),
        })
    }
}

/// The drain sweep by default: WORKERS × CONCURRENCY + PREFETCH.
const DEFAULT_SWEEP: [(usize, u32, u32); 9] = [
    (1, 8, 0),
    (1, 32, 0),
    (1, 128, 0),
    (2, 8, 0),
    (2, 32, 0),
    (2, 128, 0),
    (2, 512, 0),
    // The peak on this machine (BENCHMARKS.md, issue 12, 2026-12-04).
    (2, 1024, 1024),
    (2, 256, 256),
];

/// Every phase, in the order a run takes them.
const PHASES: [Phase; 9] = [
    Phase::Enqueue,
    Phase::Drain,
    Phase::Latency,
    Phase::Recovery,
    Phase::Backlog,
    Phase::Dependents,
    Phase::Schedules,
    Phase::Pressure,
    Phase::Soak,
];

/// The phases run without `--only`.
const DEFAULT_PHASES: [Phase; 4] = [
    Phase::Enqueue,
    Phase::Drain,
    Phase::Latency,
    Phase::Recovery,
];

/// Every figure of every run, by name, and the samples the soak and pressure phases keep.
#[derive(Default)]
struct Recorder {
    raw: Vec<(String, &'static str, Vec<f64>)>,
    soak_samples: Vec<phases::SoakSample>,
    pressure_samples: Vec<pressure::Sample>,
}

impl Recorder {
    fn record(&mut self, name: impl Into<String>, unit: &'static str, value: f64) {
        let name = name.into();
        match self.raw.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, _, values)) => values.push(value),
            None => self.raw.push((name, unit, vec![value])),
        }
    }
}

/// The progress bar's line: which run, which step.
struct Progress<'a> {
    bar: &'a ProgressBar,
    run: usize,
    runs: usize,
}

impl Progress<'_> {
    fn step(&self, what: &str) {
        self.bar
            .set_message(format!("run {}/{}: {what}", self.run, self.runs));
        self.bar.inc(1);
    }
}

/// One phase's figures in one run: the phase table's dispatch.
struct Phases<'a> {
    bench: &'a Bench,
    plan: &'a Plan,
    progress: Progress<'a>,
}

impl Phases<'_> {
    async fn run(&self, phase: Phase, rec: &mut Recorder) -> anyhow::Result<()> {
        match phase {
            Phase::Enqueue => self.enqueue(rec).await,
            Phase::Drain => self.drain(rec).await,
            Phase::Latency => self.latency(rec).await,
            Phase::Recovery => self.recovery(rec).await,
            Phase::Backlog => self.backlog(rec).await,
            Phase::Dependents => self.dependents(rec).await,
            Phase::Schedules => self.schedules(rec).await,
            Phase::Pressure => self.pressure(rec).await,
            Phase::Soak => self.soak(rec).await,
        }
    }

    /// Show `what`, start from an empty table (truncated and vacuumed), measure.
    async fn fresh(&self, what: &str) -> anyhow::Result<()> {
        self.progress.step(what);
        self.bench.reset().await
    }

    async fn enqueue(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        let (bench, period) = (self.bench, self.plan.period);
        self.fresh("raw insert ceiling").await?;
        let v = phases::ceiling_insert(bench, 8, period).await?;
        rec.record("ceiling: raw single-row INSERT, 8 connections", "rows/s", v);
        self.fresh("enqueue via the Rust API").await?;
        let v = phases::enqueue_rust(bench, 8, period).await?;
        rec.record("enqueue: Store::enqueue, 8 producers", "jobs/s", v);
        self.fresh("enqueue via HTTP").await?;
        let v = phases::enqueue_http(bench, 8, period).await?;
        rec.record("enqueue: POST /v1/jobs, 8 clients", "jobs/s", v);
        self.fresh("bulk enqueue via the Rust API").await?;
        let v = phases::bulk_rust(bench, 2, period).await?;
        rec.record("bulk: Store::enqueue_batch ×1000, 2 producers", "jobs/s", v);
        self.fresh("bulk enqueue via HTTP").await?;
        let v = phases::bulk_http(bench, 2, period).await?;
        rec.record("bulk: POST /v1/jobs/batch ×1000, 2 clients", "jobs/s", v);
        Ok(())
    }

    async fn drain(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        let (bench, jobs) = (self.bench, self.plan.jobs);
        self.fresh("raw claim-100 + complete ceiling").await?;
        let v = phases::ceiling_claim_complete(bench, 4, jobs).await?;
        rec.record(
            "ceiling: raw claim 100 + complete, 4 connections",
            "jobs/s",
            v,
        );
        // On a table of its own: no reset needed.
        self.progress
            .step("raw claim-100 + complete ceiling, minimal table");
        let v = phases::ceiling_minimal_table(bench, 4, jobs).await?;
        rec.record(
            "ceiling: raw claim 100 + complete on a minimal table, 4 connections",
            "jobs/s",
            v,
        );
        for &(workers, concurrency, prefetch) in &self.plan.sweep {
            self.fresh(&format!(
                "drain {jobs} jobs, {workers} worker(s) × {concurrency} + {prefetch}"
            ))
            .await?;
            let name = if prefetch == 0 {
                format!("drain: {workers} worker process(es) × concurrency {concurrency}")
            } else {
                format!(
                    "drain: {workers} worker process(es) × concurrency {concurrency}, prefetch {prefetch}"
                )
            };
            let v = phases::drain(bench, jobs, workers, concurrency, prefetch).await?;
            rec.record(name, "jobs/s", v);
        }
        Ok(())
    }

    async fn latency(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        self.fresh("latency").await?;
        let rate = self.plan.rate.unwrap_or(200);
        let [p50, p95, p99, max] = phases::latency(self.bench, rate, self.plan.samples).await?;
        rec.record(format!("latency p50 at {rate}/s offered"), "ms", p50);
        rec.record(format!("latency p95 at {rate}/s offered"), "ms", p95);
        rec.record(format!("latency p99 at {rate}/s offered"), "ms", p99);
        rec.record(format!("latency max at {rate}/s offered"), "ms", max);
        Ok(())
    }

    async fn recovery(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        let ttl = self.plan.recovery_ttl;
        self.fresh("recovery of a crashed worker's job").await?;
        let recovered = phases::recovery(self.bench, ttl).await?;
        rec.record(
            format!(
                "recovery: kill → restarted elsewhere, lease TTL {}s",
                ttl.as_secs()
            ),
            "s",
            recovered,
        );
        rec.record(
            "recovery: overhead beyond the lease TTL",
            "s",
            recovered - ttl.as_secs_f64(),
        );
        Ok(())
    }

    async fn backlog(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        let window = 100_000;
        for backlog in [100_000, self.plan.backlog] {
            self.fresh(&format!("backlog: enqueue {backlog} jobs over HTTP"))
                .await?;
            let outcome = phases::backlog(self.bench, backlog, window, self.progress.bar).await?;
            rec.record(
                format!("backlog: drain rate of {window} jobs from a {backlog}-job backlog, 1 worker × 128"),
                "jobs/s",
                outcome.drain_per_second,
            );
            rec.record(
                format!("backlog: GET /v1/queues with {backlog} jobs queued"),
                "ms",
                outcome.queues_ms,
            );
        }
        Ok(())
    }

    async fn dependents(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        let jobs = self.plan.jobs;
        let shape @ (workers, concurrency, prefetch) = *self.plan.sweep.last().expect("a sweep");
        let shown = format!("{workers} × {concurrency} + {prefetch}");
        for with_dependents in [false, true] {
            let which = if with_dependents {
                "with dependents"
            } else {
                "without"
            };
            self.fresh(&format!("drain {jobs} jobs {which}, {shown}"))
                .await?;
            let name = if with_dependents {
                format!("dependents: drain, half the jobs waiting on the other half, {shown}")
            } else {
                format!("dependents: the same drain without dependencies, {shown}")
            };
            let v = phases::drain_dependents(self.bench, jobs, shape, with_dependents).await?;
            rec.record(name, "jobs/s", v);
        }
        self.fresh("dependency work: 1,000 x 100 in a batch, 10,000 dependents succeed / cancel")
            .await?;
        let [dense, succeed, cancel] = phases::dependency_work(self.bench).await?;
        rec.record(
            "dependents: enqueue a batch of 1,000 jobs, each depending on the 100 before it",
            "s",
            dense,
        );
        rec.record(
            "dependents: complete a parent with 10,000 waiting dependents",
            "s",
            succeed,
        );
        rec.record(
            "dependents: cancel a parent with 10,000 waiting dependents",
            "s",
            cancel,
        );
        Ok(())
    }

    async fn schedules(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        self.fresh("schedules: 10,000 due in the same second")
            .await?;
        let (took, missed) = phases::schedule_burst(self.bench, 10_000).await?;
        rec.record(
            "schedules: 10,000 due in the same second, seconds until every job exists",
            "s",
            took,
        );
        rec.record(
            "schedules: slots missed in that burst",
            "slots",
            missed as f64,
        );
        Ok(())
    }

    async fn pressure(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        self.progress.step("pressure: the peak drain of its worker");
        let rate = match self.plan.rate {
            Some(rate) => f64::from(rate),
            None => (pressure::peak(self.bench).await? / 2.0).max(100.0),
        };
        rec.record("pressure: offered rate", "jobs/s", rate);
        let modes: &[bool] = if self.plan.pressure_compare {
            &[false, true]
        } else {
            &[true]
        };
        for &scenario in &self.plan.pressure_scenarios {
            for &marks in modes {
                let label = format!(
                    "pressure {}{}",
                    serde_json::to_value(scenario)?.as_str().unwrap_or("?"),
                    if marks { "" } else { " (lane marks off)" }
                );
                self.progress.step(&label);
                let lengths = self.plan.pressure_lengths;
                let outcome = pressure::run(
                    self.bench,
                    scenario,
                    marks,
                    rate,
                    lengths,
                    self.progress.bar,
                )
                .await?;
                outcome.record(&label, rec);
            }
        }
        Ok(())
    }

    async fn soak(&self, rec: &mut Recorder) -> anyhow::Result<()> {
        self.fresh("soak").await?;
        let soak = phases::soak(
            self.bench,
            self.plan.soak,
            self.plan.soak_pin,
            self.progress.bar,
        )
        .await?;
        for (name, unit, value) in soak.figures() {
            rec.record(name, unit, value);
        }
        rec.soak_samples.extend(soak.samples);
        Ok(())
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(&args)?;
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new((plan.runs * (12 + plan.sweep.len())) as u64);
        bar.set_style(ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} ({elapsed})",
        )?);
        bar
    };
    let bench = Bench::start(args.database_url.as_deref()).await?;
    if let Some(limit) = args.concurrency_limit {
        let patch = faultline::store::QueueSettingsPatch {
            concurrency_limit: Some(Some(limit)),
            ..Default::default()
        };
        bench
            .store
            .update_queue_settings(faultline::job::DEFAULT_QUEUE, &patch)
            .await?;
    }
    let mut rec = Recorder::default();
    for run in 1..=plan.runs {
        let progress = Progress {
            bar: &bar,
            run,
            runs: plan.runs,
        };
        let phases = Phases {
            bench: &bench,
            plan: &plan,
            progress,
        };
        for &phase in &plan.phases {
            phases.run(phase, &mut rec).await?;
        }
        phases.progress.step("done");
    }
    bar.finish_and_clear();
    let results = Results {
        figures: figures(std::mem::take(&mut rec.raw)),
        soak_samples: rec.soak_samples,
        pressure_samples: rec.pressure_samples,
        server: bench.server.clone(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        runs: plan.runs,
        jobs_per_drain: plan.jobs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        results.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// Each figure's median, min and max, and the ceiling it is shown against.
fn figures(raw: Vec<(String, &'static str, Vec<f64>)>) -> Vec<Figure> {
    let find = |prefix: &str| {
        raw.iter()
            .find(|(n, _, _)| n.starts_with(prefix))
            .map(|(_, _, v)| median(v))
    };
    let insert_ceiling = find("ceiling: raw single-row INSERT");
    let claim_ceiling = find("ceiling: raw claim 100 + complete, ");
    let minimal_ceiling = find("ceiling: raw claim 100 + complete on a minimal");
    let small_backlog = find("backlog: drain rate of 100000 jobs from a 100000-job");
    // Drains are shown against the physical limit of a SKIP LOCKED queue here (the minimal
    // table); the own-table ceiling is a figure of its own.
    let ceiling_of = |name: &str| {
        if name.starts_with("enqueue:") {
            insert_ceiling.map(|c| ("raw single-row INSERT", c))
        } else if name.starts_with("drain:")
            || name.starts_with("ceiling: raw claim 100 + complete, ")
        {
            minimal_ceiling
                .map(|c| ("raw claim 100 + complete, minimal table", c))
                .or(claim_ceiling.map(|c| ("raw claim 100 + complete", c)))
        } else if name.starts_with("backlog:") {
            small_backlog.map(|c| ("drain rate at a 100,000-job backlog", c))
        } else {
            None
        }
    };
    raw.iter()
        .map(|(name, unit, samples)| {
            let m = median(samples);
            let ceiling = ceiling_of(name);
            Figure {
                min: samples.iter().copied().fold(f64::INFINITY, f64::min),
                max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                median: m,
                samples: samples.clone(),
                ceiling: ceiling.map(|(c, _)| c.to_owned()),
                percent_of_ceiling: ceiling.map(|(_, v)| 100.0 * m / v),
                name: name.clone(),
                unit,
            }
        })
        .collect()
}

impl Results {
    /// The human-readable report.
    fn print(&self) {
        println!("faultline bench: {} cores, {}", self.cores, self.server);
        println!(
            "{} run(s); median (min … max); drains of {} noop jobs\n",
            self.runs, self.jobs_per_drain
        );
        println!(
            "{:<58} {:>12} {:>25}  of ceiling",
            "figure", "median", "min … max"
        );
        for s in &self.pressure_samples {
            println!("{}", s.line());
        }
        if !self.pressure_samples.is_empty() {
            println!();
        }
        if !self.soak_samples.is_empty() {
            println!(
                "soak samples: {:>6} {:>10} {:>10} {:>12} {:>12} {:>10} {:>6}",
                "t (s)", "drain/s", "backlog", "live MB", "live dead", "history MB", "pin"
            );
            for s in &self.soak_samples {
                println!(
                    "              {:>6.0} {:>10.0} {:>10} {:>12.1} {:>12} {:>10.1} {:>6}",
                    s.at_seconds,
                    s.drain_per_second,
                    s.backlog,
                    s.live_mb,
                    s.live_dead_tuples,
                    s.history_mb,
                    if s.pinned { "held" } else { "" }
                );
            }
            println!();
        }
        for f in &self.figures {
            let pct = f
                .percent_of_ceiling
                .map_or(String::new(), |p| format!("{p:.0} %"));
            println!(
                "{:<58} {:>9.1} {:<6} {:>10.1} … {:<10.1}  {pct}",
                f.name, f.median, f.unit, f.min, f.max
            );
        }
    }
}
