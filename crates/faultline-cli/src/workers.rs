//! `faultline workers`: the live worker processes and the elected maintainer, as a table (or
//! the API's JSON with `--json`).

use std::process::ExitCode;

use clap::Args;
use faultline::http::WorkersResponse;
use reqwest::Method;

use crate::args::ApiClientArgs;
use crate::jobs::{print_raw, truncate};

#[derive(Debug, Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub api: ApiClientArgs,
}

pub async fn run(args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let (status, body) = args
        .api
        .client()
        .send(Method::GET, "/v1/workers", None)
        .await?;
    if let Some(code) = print_raw(status, &body, args.api.json)? {
        return Ok(code);
    }
    let list: WorkersResponse = serde_json::from_value(body)?;
    println!(
        "{:<28}  {:<20}  {:>5}  {:>8}  {:<20}  {:<9}  LEADER",
        "ID", "QUEUES", "SLOTS", "INFLIGHT", "STARTED", "SEEN"
    );
    let now = chrono::Utc::now();
    for w in &list.workers {
        let seen = (now - w.last_seen_at).num_milliseconds().max(0) as f64 / 1000.0;
        println!(
            "{:<28}  {:<20}  {:>5}  {:>8}  {:<20}  {:<9}  {}",
            truncate(&w.id, 28),
            truncate(&w.queues.join(","), 20),
            w.concurrency,
            w.inflight,
            w.started_at.format("%Y-%m-%d %H:%M:%S"),
            format!("{seen:.1}s ago"),
            if w.leader { "yes" } else { "" },
        );
    }
    match &list.leader {
        Some(leader) => println!(
            "maintainer: {} (term {}, since {})",
            leader.holder,
            leader.token,
            leader.elected_at.format("%Y-%m-%d %H:%M:%S")
        ),
        None => println!("maintainer: none elected"),
    }
    Ok(ExitCode::SUCCESS)
}
