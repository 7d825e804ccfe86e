//! `faultline queues`: list queues with their counts and settings, pause and resume them, set
//! their limits — through the API.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use faultline::http::QueuesResponse;
use faultline::QueueStats;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::args::{ApiClientArgs, Client};
use crate::jobs::{print_raw, truncate};

#[derive(Debug, Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    pub api: ApiClientArgs,

    #[command(subcommand)]
    pub command: QueuesCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Every queue: counts by state, backlog age, settings.
    List,
    /// Claim nothing from the queue until resumed (running jobs finish; enqueues accepted).
    Pause {
        name: String,
        /// Pause a queue that has neither jobs nor settings yet (without it, such a name is
        /// refused: a typo must not create a paused queue).
        #[arg(long)]
        create: bool,
    },
    /// Resume a paused queue.
    Resume { name: String },
    /// Set or clear a queue's limits.
    Set {
        name: String,
        /// At most N jobs of the queue running at once, all workers together (`none` clears).
        #[arg(long, value_name = "N|none", value_parser = limit)]
        concurrency_limit: Option<Limit>,
        /// At most COUNT job starts per PERIOD, e.g. `10/1s` (`none` clears).
        #[arg(long, value_name = "COUNT/PERIOD|none", value_parser = rate)]
        rate_limit: Option<Rate>,
        /// At most N running jobs per concurrency key (`none`: back to the default, 1).
        #[arg(long, value_name = "N|none", value_parser = limit)]
        key_concurrency: Option<Limit>,
    },
}

/// A limit to set (`Some`) or clear (`None`).
#[derive(Clone, Debug)]
pub struct Limit(Option<i32>);

/// A rate (count, period in ms) to set, or clear.
#[derive(Clone, Debug)]
pub struct Rate(Option<(i32, i32)>);

/// `N` (1 to 1,000,000) or `none`.
fn limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    match text.parse::<i32>() {
        Ok(n) if (1..=faultline::store::MAX_LIMIT).contains(&n) => Ok(Limit(Some(n))),
        _ => Err(format!(
            "expected a number from 1 to {} or `none`, got {text:?}",
            faultline::store::MAX_LIMIT
        )),
    }
}

/// `COUNT/PERIOD` (`10/1s`, `100/500ms`) or `none`.
fn rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Rate(None));
    }
    let (count, period) = text
        .split_once('/')
        .ok_or_else(|| format!("expected COUNT/PERIOD such as 10/1s, got {text:?}"))?;
    let count = limit(count)?.0.ok_or("the count cannot be `none`")?;
    let period = crate::args::duration(period)?;
    let ms = i32::try_from(period.as_millis())
        .ok()
        .filter(|ms| (1..=faultline::store::MAX_RATE_PERIOD_MS).contains(ms))
        .ok_or_else(|| format!("the period must be 1ms to 1d, got {period:?}"))?;
    Ok(Rate(Some((count, ms))))
}

/// Send the command to the API, then print its answer: the API's error, its JSON (`--json`),
/// or the queues as a table.
pub async fn run(args: QueuesArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client();
    let (status, body) = send(&client, &args.command).await?;
    if let Some(code) = print_raw(status, &body, args.api.json)? {
        return Ok(code);
    }
    let queues = match &args.command {
        QueuesCommand::List => serde_json::from_value::<QueuesResponse>(body)?.queues,
        _ => vec![serde_json::from_value::<QueueStats>(body)?],
    };
    print_queues(&queues);
    Ok(ExitCode::SUCCESS)
}

/// The command as its request to the API; the answer's status and body.
async fn send(client: &Client, command: &QueuesCommand) -> anyhow::Result<(StatusCode, Value)> {
    match command {
        QueuesCommand::List => client.send(Method::GET, "/v1/queues", None).await,
        QueuesCommand::Pause { name, create } => {
            if !create {
                known(client, name).await?;
            }
            client.send(Method::POST, &path(name, "/pause"), None).await
        }
        QueuesCommand::Resume { name } => {
            client
                .send(Method::POST, &path(name, "/resume"), None)
                .await
        }
        QueuesCommand::Set {
            name,
            concurrency_limit,
            rate_limit,
            key_concurrency,
        } => {
            let patch = patch(concurrency_limit, rate_limit, key_concurrency);
            client
                .send(Method::PATCH, &path(name, ""), Some(Value::Object(patch)))
                .await
        }
    }
}

/// Fail unless the API lists a queue `name` (one with jobs or settings).
async fn known(client: &Client, name: &str) -> anyhow::Result<()> {
    let (status, body) = client.send(Method::GET, "/v1/queues", None).await?;
    if !status.is_success() {
        // The pause itself will report what is wrong.
        return Ok(());
    }
    let queues = serde_json::from_value::<QueuesResponse>(body)?.queues;
    anyhow::ensure!(
        queues.iter().any(|q| q.queue == name),
        "no queue named {name:?} (it has neither jobs nor settings): check the name, or pass \
         --create to pause it before its first job"
    );
    Ok(())
}

/// The queue's route, its name escaped, with `tail` after it.
fn path(name: &str, tail: &str) -> String {
    crate::args::resource_path("queues", name, tail)
}

/// The PATCH body: only the limits given, `null` for those cleared.
fn patch(
    concurrency_limit: &Option<Limit>,
    rate_limit: &Option<Rate>,
    key_concurrency: &Option<Limit>,
) -> Map<String, Value> {
    let mut patch = Map::new();
    if let Some(Limit(limit)) = concurrency_limit {
        patch.insert("concurrency_limit".into(), json!(limit));
    }
    if let Some(Rate(rate)) = rate_limit {
        let value = rate.map(|(count, period_ms)| json!({"count": count, "period_ms": period_ms}));
        patch.insert("rate_limit".into(), value.unwrap_or(Value::Null));
    }
    if let Some(Limit(limit)) = key_concurrency {
        patch.insert("key_concurrency".into(), json!(limit));
    }
    patch
}

/// The queues as a table, one line each.
fn print_queues(queues: &[QueueStats]) {
    println!(
        "{:<20}  {:>8}  {:>8}  {:>10}  {:>7}  {:>8}  {:<6}  {:<6}  {:<6}  RATE",
        "QUEUE", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "AGE", "PAUSED", "LIMIT", "PERKEY"
    );
    for q in queues {
        println!(
            "{:<20}  {:>8}  {:>8}  {:>10}  {:>7}  {:>7.1}s  {:<6}  {:<6}  {:<6}  {}",
            truncate(&q.queue, 20),
            q.queued,
            q.running,
            q.succeeded,
            q.failed,
            q.oldest_eligible_age_seconds,
            if q.paused { "yes" } else { "" },
            q.concurrency_limit.map_or(String::new(), |n| n.to_string()),
            q.key_concurrency.map_or(String::new(), |n| n.to_string()),
            q.rate_limit
                .map_or(String::new(), |r| format!("{}/{}ms", r.count, r.period_ms)),
        );
    }
}
