//! `drill duplicates`: concurrent submissions with one idempotency key make exactly one job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::env::{Env, EnvOptions};
use super::report::Report;

pub async fn run(report: &mut Report, db: Option<&str>) -> anyhow::Result<()> {
    let env = Env::start(report, EnvOptions::default(), db).await?;
    let body = json!({"kind": "noop", "payload": {"order": 42}});
    let post_all = |requests: Vec<(String, serde_json::Value)>| {
        let env = &env;
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (key, body) in requests {
                let http = env.http.clone();
                let url = format!("{}/v1/jobs", env.api_url);
                // As a client should: a 503 (the API could not get a database connection in
                // time under this burst) is retried with the same key until it is answered.
                tasks.spawn(async move {
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
                });
            }
            let mut statuses: HashMap<u16, usize> = HashMap::new();
            while let Some(status) = tasks.join_next().await {
                *statuses.entry(status.unwrap_or(0)).or_default() += 1;
            }
            statuses
        }
    };
    let one_key: Vec<_> = (0..100)
        .map(|_| ("dup-one".to_owned(), body.clone()))
        .collect();
    let statuses = post_all(one_key).await;
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
    let statuses = post_all(many).await;
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
