//! `faultline jobs`: enqueue, get, list, retry and cancel jobs through the API. Human-readable
//! output by default, the API's JSON with `--json`; on failure, the API's error message and a
//! non-zero exit.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use faultline::http::EnqueueRequest;
use faultline::http::ErrorResponse;
use faultline::{Job, Page, Payload};
use reqwest::{Method, StatusCode};

use crate::args::{ApiClientArgs, Client};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub api: ApiClientArgs,

    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Enqueue a job.
    Enqueue(EnqueueArgs),
    /// Show a job and its error history.
    Get { id: String },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, waiting, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Jobs per page (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Where the previous page ended (the `--cursor` it printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Re-queue a failed or cancelled job.
    Retry { id: String },
    /// Cancel a queued or running job.
    Cancel { id: String },
}

/// What `jobs enqueue` takes.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Which handler runs it (noop, sleep, fail, webhook, or one of yours).
    kind: String,
    /// The payload, as JSON.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// The queue (default `default`).
    #[arg(long)]
    queue: Option<String>,
    /// Lower runs first (default 0; negative allowed).
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i16>,
    /// The attempt budget, at least 1 (default 5).
    #[arg(long)]
    max_attempts: Option<i32>,
    /// Not before this time (RFC 3339).
    #[arg(long)]
    run_at: Option<String>,
    /// A second enqueue with this key returns the first job instead of making another.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Each attempt's time limit in milliseconds (default: none, or the kind's own).
    #[arg(long)]
    timeout_ms: Option<i32>,
    /// At most the queue's key concurrency (default 1) jobs with this key run at once.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Run only after this job has succeeded (a job id; repeat or comma-separate for more).
    #[arg(long, value_delimiter = ',', value_name = "ID")]
    depends_on: Vec<String>,
    /// At most one queued, waiting or running job with this key (or, with --unique-for,
    /// one per period); a duplicate prints the existing job.
    #[arg(long, value_name = "KEY")]
    unique_key: Option<String>,
    /// Unique while live, the key derived from kind, queue and payload (unless --unique-key).
    #[arg(long)]
    unique: bool,
    /// Unique within this period of the enqueue that created the job (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = crate::args::duration)]
    unique_for: Option<std::time::Duration>,
}

/// Send the command to the API, then print its answer: the API's error, its JSON as it came
/// (`--json`), or a human-readable form.
pub async fn run(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = args.api.client();
    let (status, body, text) = send(&client, &args.command).await?;
    if !status.is_success() {
        return print_failure(status, &body);
    }
    if args.api.json {
        // As the API sent it: payloads and results exactly as they were written.
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    print_answer(&args.command, status, &text)?;
    Ok(ExitCode::SUCCESS)
}

/// The command as its request to the API; the answer's status, body and text.
async fn send(
    client: &Client,
    command: &JobsCommand,
) -> anyhow::Result<(StatusCode, Value, String)> {
    match command {
        JobsCommand::Enqueue(enqueue) => {
            let request = enqueue_request(enqueue)?;
            client
                .send_text(
                    Method::POST,
                    "/v1/jobs",
                    Some(serde_json::to_string(&request_json(&request))?),
                )
                .await
        }
        JobsCommand::Get { id } => {
            client
                .send_text(Method::GET, &format!("/v1/jobs/{id}"), None)
                .await
        }
        JobsCommand::List {
            state,
            queue,
            kind,
            limit,
            cursor,
        } => {
            let query = list_query(*limit, [state, queue, kind, cursor]);
            client
                .send_text(Method::GET, &format!("/v1/jobs?{query}"), None)
                .await
        }
        JobsCommand::Retry { id } => {
            client
                .send_text(Method::POST, &format!("/v1/jobs/{id}/retry"), None)
                .await
        }
        JobsCommand::Cancel { id } => {
            client
                .send_text(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
                .await
        }
    }
}

/// The enqueue request from the flags, each parsed (and rejected with its flag's name) in
/// turn: the dependencies, the payload, the run time.
fn enqueue_request(args: &EnqueueArgs) -> anyhow::Result<EnqueueRequest> {
    let (unique_scope, unique_period_ms) = unique_scope(args.unique, args.unique_for);
    let depends_on = args
        .depends_on
        .iter()
        .map(|id| {
            id.trim()
                .parse()
                .map(faultline::Dependency::Job)
                .with_context(|| format!("--depends-on is not a job id (UUID): {id:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let payload = &args.payload;
    let payload = Payload::from_json(payload.as_str())
        .with_context(|| format!("--payload is not valid JSON: {payload}"))?;
    let run_at = args
        .run_at
        .as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .with_context(|| format!("--run-at is not an RFC 3339 time: {t}"))
        })
        .transpose()?;
    Ok(EnqueueRequest {
        kind: args.kind.clone(),
        payload,
        queue: args.queue.clone(),
        priority: args.priority,
        max_attempts: args.max_attempts,
        run_at,
        idempotency_key: args.idempotency_key.clone(),
        timeout_ms: args.timeout_ms,
        concurrency_key: args.concurrency_key.clone(),
        depends_on,
        unique_key: args.unique_key.clone(),
        unique_scope,
        unique_period_ms,
    })
}

/// The uniqueness scope and period from `--unique` and `--unique-for`.
fn unique_scope(
    unique: bool,
    unique_for: Option<std::time::Duration>,
) -> (Option<faultline::http::UniqueScopeName>, Option<i64>) {
    use faultline::http::UniqueScopeName;
    match unique_for {
        Some(period) => (
            Some(UniqueScopeName::Period),
            Some(i64::try_from(period.as_millis()).unwrap_or(i64::MAX)),
        ),
        None if unique => (Some(UniqueScopeName::Active), None),
        None => (None, None),
    }
}

/// The list's query string: the limit, then each filter given.
fn list_query(limit: u32, [state, queue, kind, cursor]: [&Option<String>; 4]) -> String {
    let mut query = vec![("limit", limit.to_string())];
    for (name, value) in [
        ("state", state),
        ("queue", queue),
        ("kind", kind),
        ("cursor", cursor),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    serde_urlencoded(&query)
}

/// A successful answer, human-readable: a page as a table, an enqueue as one line, a job in
/// full.
fn print_answer(command: &JobsCommand, status: StatusCode, text: &str) -> anyhow::Result<()> {
    match command {
        JobsCommand::List { .. } => print_page(&serde_json::from_str(text)?),
        JobsCommand::Enqueue(_) => {
            let job: Job = serde_json::from_str(text)?;
            let verb = if status == StatusCode::CREATED {
                "created"
            } else {
                "replayed existing"
            };
            println!("{verb} job {} ({}, queue {})", job.id, job.state, job.queue);
        }
        _ => print_job(&serde_json::from_str(text)?),
    }
    Ok(())
}

/// The request as the API takes it (omitting unset fields), its payload exactly as given.
fn request_json(request: &EnqueueRequest) -> RequestBody<'_> {
    let mut map = serde_json::Map::new();
    map.insert("kind".into(), Value::String(request.kind.clone()));
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            map.insert(name.into(), value);
        }
    };
    put("queue", request.queue.clone().map(Value::from));
    put("priority", request.priority.map(Value::from));
    put("max_attempts", request.max_attempts.map(Value::from));
    put(
        "run_at",
        request.run_at.map(|t| Value::from(t.to_rfc3339())),
    );
    put(
        "idempotency_key",
        request.idempotency_key.clone().map(Value::from),
    );
    put("timeout_ms", request.timeout_ms.map(Value::from));
    put(
        "concurrency_key",
        request.concurrency_key.clone().map(Value::from),
    );
    if !request.depends_on.is_empty() {
        put("depends_on", serde_json::to_value(&request.depends_on).ok());
    }
    put("unique_key", request.unique_key.clone().map(Value::from));
    put(
        "unique_scope",
        request.unique_scope.map(|scope| {
            Value::from(match scope {
                faultline::http::UniqueScopeName::Active => "active",
                faultline::http::UniqueScopeName::Period => "period",
            })
        }),
    );
    put(
        "unique_period_ms",
        request.unique_period_ms.map(Value::from),
    );
    RequestBody {
        fields: map,
        payload: &request.payload,
    }
}

#[derive(serde::Serialize)]
struct RequestBody<'a> {
    #[serde(flatten)]
    fields: serde_json::Map<String, Value>,
    payload: &'a Payload,
}

/// Print an API error (and return failure), or with `--json` the body as it came (and return
/// success); `None` when the caller should print a table.
pub fn print_raw(status: StatusCode, body: &Value, json: bool) -> anyhow::Result<Option<ExitCode>> {
    if !status.is_success() {
        return print_failure(status, body).map(Some);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(body)?);
        return Ok(Some(ExitCode::SUCCESS));
    }
    Ok(None)
}

/// Print an API error; the command fails.
fn print_failure(status: StatusCode, body: &Value) -> anyhow::Result<ExitCode> {
    let message = serde_json::from_value::<ErrorResponse>(body.clone())
        .map(|e| format!("{} ({}): {}", status, e.error.code, e.error.message))
        .unwrap_or_else(|_| {
            // Every answer of a Faultline API carries its error body: this is something else.
            let shown = match body {
                Value::String(text) if text.trim().is_empty() => "an empty body".to_owned(),
                Value::String(text) => format!("{:?}", truncate(text, 200)),
                other => truncate(&other.to_string(), 200),
            };
            format!(
                "{status} with {shown}, not a Faultline error: is --url (FAULTLINE_URL) a \
                 Faultline API?"
            )
        });
    eprintln!("error: {message}");
    Ok(ExitCode::FAILURE)
}

fn serde_urlencoded(pairs: &[(&str, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn print_job(job: &Job) {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
    println!("id            {}", job.id);
    println!("state         {}", job.state);
    println!("queue / kind  {} / {}", job.queue, job.kind);
    println!("attempts      {} of {}", job.attempts, job.max_attempts);
    println!("priority      {}", job.priority);
    println!("payload       {}", job.payload);
    if let Some(result) = &job.result {
        println!("result        {result}");
    }
    if !job.depends_on.is_empty() {
        let parents: Vec<String> = job.depends_on.iter().map(|id| id.to_string()).collect();
        println!("depends on    {}", parents.join(", "));
    }
    println!("created       {}", job.created_at.to_rfc3339());
    println!("next run      {}", job.next_run_at.to_rfc3339());
    println!("started       {}", time(job.started_at));
    println!("finished      {}", time(job.finished_at));
    if let Some(owner) = &job.lease_owner {
        println!(
            "worker        {owner} (token {})",
            job.lease_token.unwrap_or_default()
        );
    }
    if let Some(key) = &job.idempotency_key {
        println!("idempotency   {key}");
    }
    if let Some(waiting) = &job.waiting_for {
        println!(
            "waiting for   signal {:?} until {}",
            waiting.signal,
            waiting.until.to_rfc3339()
        );
    }
    if !job.steps.is_empty() {
        println!("steps:");
        for step in &job.steps {
            println!(
                "  {} {} (attempt {}, token {}): {}",
                step.recorded_at.to_rfc3339(),
                step.name,
                step.attempt,
                step.lease_token,
                step.result.as_ref().map_or("null", |r| r.get())
            );
        }
    }
    if !job.errors.is_empty() {
        println!("errors:");
        for e in &job.errors {
            println!(
                "  #{} {} {} {}: {}",
                e.attempt,
                e.at.to_rfc3339(),
                e.worker.as_deref().unwrap_or("-"),
                e.reason,
                e.error
            );
        }
    }
}

fn print_page(page: &Page) {
    // Columns as wide as their longest value (kinds and queues are not cut).
    let width = |name: &str, values: &mut dyn Iterator<Item = usize>| {
        values.max().unwrap_or(0).max(name.len())
    };
    let queue = width(
        "QUEUE",
        &mut page.jobs.iter().map(|j| j.queue.chars().count()),
    );
    let kind = width(
        "KIND",
        &mut page.jobs.iter().map(|j| j.kind.chars().count()),
    );
    println!(
        "{:<36}  {:<9}  {:<queue$}  {:<kind$}  {:>8}  CREATED",
        "ID", "STATE", "QUEUE", "KIND", "ATTEMPTS"
    );
    for job in &page.jobs {
        println!(
            "{:<36}  {:<9}  {:<queue$}  {:<kind$}  {:>8}  {}",
            job.id,
            job.state,
            job.queue,
            job.kind,
            format!("{}/{}", job.attempts, job.max_attempts),
            job.created_at.format("%Y-%m-%d %H:%M:%S"),
        );
    }
    if let Some(cursor) = page.next_cursor {
        println!("(more: --cursor {cursor})");
    }
}

pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}
