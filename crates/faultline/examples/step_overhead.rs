//! What a recorded step costs: one worker drains `jobs` jobs that record no step, then `jobs`
//! jobs that record `steps` steps each (`ctx.step`, a trivial step), and the difference per step
//! is the step's overhead — a lookup and a fenced insert. Alternated for `rounds` rounds; prints
//! each round and the medians.
//!
//! `DATABASE_URL=postgres://… cargo run --release -p faultline-queue --example step_overhead -- \
//!  [jobs=5000] [steps=3] [rounds=3]` (a throwaway database: it enqueues and drains jobs).

use std::time::{Duration, Instant};

use faultline::worker::{HandlerRegistry, JobContext, JobError, Worker, WorkerConfig};
use faultline::{db, JobState, NewJob, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn plain(_ctx: JobContext, _: faultline::Payload) -> Result<(), JobError> {
    Ok(())
}

async fn stepped(ctx: JobContext, job: serde_json::Value) -> Result<(), JobError> {
    let steps = job["steps"].as_u64().unwrap_or(0);
    for i in 0..steps {
        let _: u64 = ctx.step(&format!("s{i}"), async { Ok(i) }).await?;
    }
    Ok(())
}

/// Seconds to drain `jobs` jobs of `kind` (payload `payload`) with one worker.
async fn drain(
    store: &Store,
    kind: &str,
    payload: serde_json::Value,
    jobs: usize,
) -> anyhow::Result<f64> {
    let queue = format!("overhead-{kind}");
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|_| NewJob::new(kind, payload.clone()).with_queue(&queue))
            .collect();
        store.enqueue_batch(batch).await?;
    }
    let mut registry = HandlerRegistry::new();
    registry.register_fn("plain", plain);
    registry.register_fn("stepped", stepped);
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 64,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(store.clone(), registry, config)?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(stop.clone()));
    loop {
        let stats = store.queue_stats().await?;
        let done = stats
            .iter()
            .find(|q| q.queue == queue)
            .is_some_and(|q| q.queued + q.running == 0);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed().as_secs_f64();
    stop.cancel();
    running.await?;
    let failed = store
        .list(
            &faultline::JobFilter {
                queue: Some(queue),
                state: Some(JobState::Failed),
                ..Default::default()
            },
            None,
            1,
        )
        .await?;
    anyhow::ensure!(failed.jobs.is_empty(), "a job failed");
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (jobs, steps, rounds) = (
        args.first().copied().unwrap_or(5000),
        args.get(1).copied().unwrap_or(3),
        args.get(2).copied().unwrap_or(3),
    );
    let pool = db::connect(&std::env::var("DATABASE_URL")?, &db::PoolConfig::default())?;
    db::migrate(&pool).await?;
    let store = Store::new(pool);
    let (mut plain_rates, mut stepped_rates, mut per_step) = (vec![], vec![], vec![]);
    for round in 1..=rounds {
        // Alternate the order, so that neither always runs on a warmer (or dirtier) table.
        let (a, b) = if round % 2 == 1 {
            let a = drain(&store, "plain", json!({}), jobs).await?;
            (
                a,
                drain(&store, "stepped", json!({ "steps": steps }), jobs).await?,
            )
        } else {
            let b = drain(&store, "stepped", json!({ "steps": steps }), jobs).await?;
            (drain(&store, "plain", json!({}), jobs).await?, b)
        };
        let overhead_us = (b - a) / (jobs * steps) as f64 * 1e6;
        println!(
            "round {round}: plain {:.0} jobs/s, {steps} steps {:.0} jobs/s, {:.0} µs per step",
            jobs as f64 / a,
            jobs as f64 / b,
            overhead_us
        );
        plain_rates.push(jobs as f64 / a);
        stepped_rates.push(jobs as f64 / b);
        per_step.push(overhead_us);
    }
    println!(
        "median: plain {:.0} jobs/s, {steps} steps {:.0} jobs/s, {:.0} µs per recorded step (one worker, concurrency 64)",
        median(plain_rates),
        median(stepped_rates),
        median(per_step)
    );
    Ok(())
}
