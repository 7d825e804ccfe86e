//! The CLI against a real API: a typo'd queue is not paused into existence, a URL that is not a
//! Faultline API is named as such, and `jobs list` keeps long kinds whole with its columns
//! aligned.

use std::process::Output;
use std::time::Duration;

use faultline::NewJob;
use serde_json::json;

use crate::harness::procs::Proc;
use crate::harness::{wait_for, TestDb};

fn faultline(args: &[&str], url: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .args(["--url", url])
        .output()
        .unwrap()
}

async fn api(db: &TestDb) -> (Proc, String) {
    let api = Proc::api(&db.url, "cli-api", &[]);
    let base = format!("http://127.0.0.1:{}", api.port);
    let http = reqwest::Client::new();
    wait_for("the API", Duration::from_secs(30), || async {
        let answer = http.get(format!("{base}/health")).send().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    (api, base)
}

#[tokio::test]
async fn pausing_an_unknown_queue_needs_create_and_a_known_one_does_not() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .enqueue(NewJob::new("noop", json!({})).with_queue("mail"))
        .await
        .unwrap();
    let (_api, base) = api(&db).await;

    let typo = faultline(&["queues", "pause", "mial"], &base);
    assert!(!typo.status.success());
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(
        said.contains("\"mial\"") && said.contains("--create"),
        "{said}"
    );
    let settings: i64 =
        sqlx::query_scalar("select count(*) from faultline.queue_settings where queue = 'mial'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(settings, 0, "a typo created settings");

    let known = faultline(&["queues", "pause", "mail"], &base);
    assert!(
        known.status.success(),
        "{}",
        String::from_utf8_lossy(&known.stderr)
    );
    let created = faultline(&["queues", "pause", "mial", "--create"], &base);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let paused: Vec<String> =
        sqlx::query_scalar("select queue from faultline.queue_settings where paused order by 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(paused, ["mail", "mial"]);
}

#[tokio::test]
async fn jobs_list_keeps_long_kinds_whole_and_its_columns_aligned() {
    let db = TestDb::new().await;
    let store = db.store();
    for kind in ["noop", "reports.monthly.generate-and-email"] {
        store.enqueue(NewJob::new(kind, json!({}))).await.unwrap();
    }
    let (_api, base) = api(&db).await;
    let listed = faultline(&["jobs", "list"], &base);
    assert!(listed.status.success());
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("reports.monthly.generate-and-email"),
        "{text}"
    );
    // Every row's CREATED column (after the kind) starts where the header's does.
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("(more")).collect();
    let at = lines[0].find("CREATED").unwrap();
    for line in &lines[1..] {
        assert_eq!(line.len(), at + "2026-01-01 00:00:00".len(), "{text}");
    }
}

#[tokio::test]
async fn a_url_that_is_not_a_faultline_api_is_named_as_such() {
    // An HTTP server that answers 404 with an empty body to everything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await });
    let id = uuid::Uuid::now_v7().to_string();
    let output = tokio::task::spawn_blocking(move || faultline(&["jobs", "get", &id], &base))
        .await
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("404") && said.contains("not a Faultline error") && said.contains("--url"),
        "{said}"
    );
}

#[tokio::test]
async fn jobs_get_shows_the_result_as_the_handler_sent_it_and_the_steps() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .into_job()
        .id;
    let claimed = crate::harness::claim_one(&store, "w", Duration::from_secs(30)).await;
    let charged = faultline::Payload::from_json(r#"{"charge":"ch_1"}"#).unwrap();
    store
        .record_step(&claimed.lease, "charge", &charged)
        .await
        .unwrap();
    let result = faultline::Payload::from_json(r#"{"rows":3,"total":1.50}"#).unwrap();
    store
        .complete_with_result(&claimed.lease, &result)
        .await
        .unwrap();
    let (_api, base) = api(&db).await;
    let shown = faultline(&["jobs", "get", &id.to_string()], &base);
    assert!(shown.status.success());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(r#"result        {"rows":3,"total":1.50}"#),
        "{text}"
    );
    // Its durable steps, each with its attempt and token.
    let token = claimed.lease.token;
    assert!(
        text.contains(&format!(
            r#"charge (attempt 1, token {token}): {{"charge":"ch_1"}}"#
        )),
        "{text}"
    );
}

#[tokio::test]
async fn schedules_are_declared_read_paused_and_deleted_from_the_cli() {
    let db = TestDb::new().await;
    let (_api, base) = api(&db).await;
    let put = faultline(
        &[
            "schedules",
            "put",
            "digest",
            "--cron",
            "0 9 * * 1-5",
            "--kind",
            "digest.send",
            "--payload",
            r#"{"team":"core","n":1.50}"#,
            "--queue",
            "mail",
            "--timezone",
            "Europe/Paris",
            "--misfire",
            "skip",
        ],
        &base,
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let stored = db.store().schedule("digest").await.unwrap();
    assert_eq!(
        (stored.queue.as_str(), stored.timezone.as_str()),
        ("mail", "Europe/Paris")
    );
    assert_eq!(stored.payload.get(), r#"{"team":"core","n":1.50}"#);

    let listed = faultline(&["schedules", "list"], &base);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("digest") && text.contains("0 9 * * 1-5"),
        "{text}"
    );
    let shown = faultline(&["schedules", "get", "digest"], &base);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains(r#"payload       {"team":"core","n":1.50}"#),
        "{text}"
    );

    assert!(faultline(&["schedules", "pause", "digest"], &base)
        .status
        .success());
    assert!(db.store().schedule("digest").await.unwrap().paused);
    assert!(faultline(&["schedules", "resume", "digest"], &base)
        .status
        .success());
    assert!(!db.store().schedule("digest").await.unwrap().paused);

    let bad = faultline(
        &["schedules", "put", "x", "--cron", "nope", "--kind", "k"],
        &base,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cron"));

    assert!(faultline(&["schedules", "delete", "digest"], &base)
        .status
        .success());
    let gone = faultline(&["schedules", "get", "digest"], &base);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not_found"));
}
