//! `drill duplicates`: concurrent submissions with one idempotency key make exactly one job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::env::{Env, EnvOptions};
use super::report::Report;

/// The drill, as its steps: start, a burst on one key, bursts on ten keys, a conflicting body
/// under a used key, then the API's counters.
pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let env = Env::start(report, EnvOptions::default(), db).await?;
    one_key(report, &env).await?;
    many_keys(report, &env).await?;
    conflicting_body(report, &env).await?;
    check_metrics(report, &env).await
}

/// 100 concurrent submissions of one body under one key: one job, one 201 and 99 replays.
async fn one_key(report: &mut Report, env: &Env) -> anyhow::Result<()> {
    let body = json!({"kind": "noop", "payload": {"order": 42}});
    let one_key: Vec<_> = (0..100)
        .map(|_| ("dup-one".to_owned(), body.clone()))
        .collect();
    let statuses = post_all(env, one_key).await;
    report.event(format!(
        "100 concurrent submissions with one key: {statuses:?}"
    ));
    let rows: i64 = sqlx::query_scalar(
        "select count(*) from faultline.all_jobs where idempotency_key = 'dup-one'",
    )
    .fetch_one(&env.pool)
    .await?;
    report.check(
        "one key → exactly one job",
        rows == 1,
        format!("{rows} rows"),
    );
    report.check(
        "… one 201 and 99 replays",
        statuses.get(&201) == Some(&1) && statuses.get(&200) == Some(&99),
        format!("{statuses:?}"),
    );
    Ok(())
}

/// 20 concurrent submissions under each of 10 keys: one job per key.
async fn many_keys(report: &mut Report, env: &Env) -> anyhow::Result<()> {
    let many: Vec<_> = (0..10)
        .flat_map(|k| {
            (0..20).map(move |_| {
                (
                    format!("dup-{k}"),
                    json!({"kind": "noop", "payload": {"k": k}}),
                )
            })
        })
        .collect();
    let statuses = post_all(env, many).await;
    report.event(format!("10 keys × 20 concurrent submissions: {statuses:?}"));
    let per_key: Vec<(String, i64)> = sqlx::query_as(
        "select idempotency_key, count(*) from faultline.all_jobs
         where idempotency_key like 'dup-_' group by 1 order by 1",
    )
    .fetch_all(&env.pool)
    .await?;
    report.check(
        "10 keys → exactly one job each",
        per_key.len() == 10 && per_key.iter().all(|(_, n)| *n == 1),
        format!(
            "{} keys, counts {:?}",
            per_key.len(),
            per_key.iter().map(|(_, n)| n).collect::<Vec<_>>()
        ),
    );
    Ok(())
}

/// A different body under the used key `dup-one`: a 409 `idempotency_conflict`.
async fn conflicting_body(report: &mut Report, env: &Env) -> anyhow::Result<()> {
    let (status, reply) = env
        .enqueue(
            &json!({"kind": "noop", "payload": {"order": 43}}),
            Some("dup-one"),
        )
        .await?;
    report.event(format!("different body under a used key: {status}"));
    report.check(
        "a different body under a used key is 409",
        status == 409 && reply["error"]["code"] == "idempotency_conflict",
        format!("{status} {}", reply["error"]["code"]),
    );
    Ok(())
}

/// The API's counters: 11 jobs enqueued, 289 submissions deduplicated.
async fn check_metrics(report: &mut Report, env: &Env) -> anyhow::Result<()> {
    let deduplicated = env
        .metric(env.api_port(), "faultline_jobs_deduplicated_total")
        .await?;
    let enqueued = env
        .metric(env.api_port(), "faultline_jobs_enqueued_total")
        .await?;
    report.check(
        "API metrics: 11 enqueued, 289 deduplicated",
        enqueued == 11.0 && deduplicated == 289.0,
        format!("{enqueued} / {deduplicated}"),
    );
    Ok(())
}

/// POST every (key, body) of `requests` at once; how many answers came with each status (0: no
/// answer).
async fn post_all(env: &Env, requests: Vec<(String, serde_json::Value)>) -> HashMap<u16, usize> {
    let mut tasks = tokio::task::JoinSet::new();
    for (key, body) in requests {
        let http = env.http.clone();
        let url = format!("{}/v1/jobs", env.api_url);
        tasks.spawn(post_answered(http, url, key, body));
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    while let Some(status) = tasks.join_next().await {
        *statuses.entry(status.unwrap_or(0)).or_default() += 1;
    }
    statuses
}

/// POST `body` under `key` until it is answered with something other than a 503 (or 30 s have
/// passed); the last status (0: no answer).
async fn post_answered(
    http: reqwest::Client,
    url: String,
    key: String,
    body: serde_json::Value,
) -> u16 {
    // As a client should: a 503 (the API could not get a database connection in
    // time under this burst) is retried with the same key until it is answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .post(&url)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await;
        let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
        if !matches!(status, 0 | 503) || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
