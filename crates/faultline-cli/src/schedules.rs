//! `faultline schedules`: list, read, declare, delete, pause and resume cron schedules through
//! the API, as a table (or the API's JSON with `--json`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use faultline::http::SchedulesResponse;
use faultline::schedule::{Misfire, Schedule, ScheduleSpec};
use faultline::Payload;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::args::{ApiClientArgs, Client};
use crate::jobs::print_raw;

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    #[command(flatten)]
    pub api: ApiClientArgs,

    #[command(subcommand)]
    pub command: SchedulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule: cron, time zone, job, next and last slot.
    List,
    /// One schedule.
    Get { name: String },
    /// Declare a schedule, or replace the one of that name (its progress kept when its cron
    /// and time zone are unchanged).
    Put(PutArgs),
    /// Delete a schedule (jobs it enqueued stay).
    Delete { name: String },
    /// Fire nothing until resumed (the slots of the pause are not misfires).
    Pause { name: String },
    /// Resume a paused schedule.
    Resume { name: String },
}

/// What `schedules put` takes.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The schedule's name.
    name: String,
    /// 5 fields (`*/5 * * * *`) or 6 with seconds first (`*/10 * * * * *`).
    #[arg(long)]
    cron: String,
    /// The kind of the jobs it enqueues.
    #[arg(long)]
    kind: String,
    /// Their payload, as JSON.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Their queue (default `default`).
    #[arg(long)]
    queue: Option<String>,
    /// Their priority (default 0; negative allowed).
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i16>,
    /// Their attempt budget (default 5).
    #[arg(long)]
    max_attempts: Option<i32>,
    /// The IANA time zone the cron is read in (default UTC).
    #[arg(long)]
    timezone: Option<String>,
    /// Slots missed while nothing was up to fire them: `run_once` (default) or `skip`.
    #[arg(long, value_parser = |text: &str| Misfire::try_from(text.to_owned()))]
    misfire: Option<Misfire>,
    /// Declare it paused.
    #[arg(long)]
    paused: bool,
}

pub async fn run(args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client();
    let (status, body, text) = send(&client, &args.command).await?;
    if !status.is_success() || args.api.json {
        if let Some(code) = print_raw(status, &body, false)? {
            return Ok(code);
        }
        // As the API sent it: payloads exactly as they were written.
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    match &args.command {
        SchedulesCommand::List => print_list(&serde_json::from_str::<SchedulesResponse>(&text)?),
        SchedulesCommand::Delete { name } => println!("deleted schedule {name}"),
        _ => print_one(&serde_json::from_str::<Schedule>(&text)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The command's request; the answer's status, body and text (a payload is exact only in the
/// text).
async fn send(
    client: &Client,
    command: &SchedulesCommand,
) -> anyhow::Result<(StatusCode, Value, String)> {
    let (method, path, body) = match command {
        SchedulesCommand::List => (Method::GET, "/v1/schedules".to_owned(), None),
        SchedulesCommand::Get { name } => (Method::GET, path(name, ""), None),
        SchedulesCommand::Put(put) => (Method::PUT, path(&put.name, ""), Some(spec(put)?)),
        SchedulesCommand::Delete { name } => (Method::DELETE, path(name, ""), None),
        SchedulesCommand::Pause { name } => (Method::POST, path(name, "/pause"), None),
        SchedulesCommand::Resume { name } => (Method::POST, path(name, "/resume"), None),
    };
    client.send_text(method, &path, body).await
}

/// The request body of `put`: the payload as given, exactly.
fn spec(put: &PutArgs) -> anyhow::Result<String> {
    let payload = Payload::from_json(put.payload.as_str())
        .with_context(|| format!("--payload is not valid JSON: {}", put.payload))?;
    let spec = ScheduleSpec {
        cron: put.cron.clone(),
        kind: put.kind.clone(),
        payload,
        queue: put.queue.clone(),
        priority: put.priority,
        max_attempts: put.max_attempts,
        timezone: put.timezone.clone(),
        misfire: put.misfire,
        paused: put.paused.then_some(true),
    };
    Ok(serde_json::to_string(&spec)?)
}

/// The schedule's route, its name escaped, with `tail` after it.
fn path(name: &str, tail: &str) -> String {
    crate::args::resource_path("schedules", name, tail)
}

fn print_list(list: &SchedulesResponse) {
    let width = |f: &dyn Fn(&Schedule) -> usize, title: &str| {
        list.schedules
            .iter()
            .map(f)
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let name = width(&|s| s.name.chars().count(), "NAME");
    let cron = width(&|s| s.cron.chars().count(), "CRON");
    let kind = width(&|s| s.kind.chars().count(), "KIND");
    println!(
        "{:<name$}  {:<cron$}  {:<16}  {:<kind$}  {:<12}  {:<6}  NEXT",
        "NAME", "CRON", "TIME ZONE", "KIND", "QUEUE", "PAUSED"
    );
    for s in &list.schedules {
        println!(
            "{:<name$}  {:<cron$}  {:<16}  {:<kind$}  {:<12}  {:<6}  {}",
            s.name,
            s.cron,
            s.timezone,
            s.kind,
            s.queue,
            if s.paused { "yes" } else { "" },
            s.next_run_at.map_or("-".to_owned(), |t| t.to_rfc3339()),
        );
    }
}

fn print_one(s: &Schedule) {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
    println!("name          {}", s.name);
    println!("cron          {} ({})", s.cron, s.timezone);
    println!(
        "job           {} on {} (priority {}, {} attempts)",
        s.kind, s.queue, s.priority, s.max_attempts
    );
    println!("payload       {}", s.payload);
    println!("misfire       {}", s.misfire.as_str());
    println!("paused        {}", if s.paused { "yes" } else { "no" });
    println!("next slot     {}", time(s.next_run_at));
    println!("last slot     {}", time(s.last_run_at));
    if let Some(id) = s.last_job_id {
        println!("last job      {id}");
    }
}
