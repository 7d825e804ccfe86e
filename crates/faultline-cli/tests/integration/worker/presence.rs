//! docs/operations.md Workers registry: `GET /v1/workers` and `faultline workers` follow worker
//! processes as they start, stop and die.

use std::time::Duration;

use serde_json::Value;

use crate::harness::procs::Proc;
use crate::harness::{wait_for, TestDb};

async fn listed(api: &Proc) -> Option<Value> {
    let url = format!("http://127.0.0.1:{}/v1/workers", api.port);
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

fn ids(list: &Value) -> Vec<String> {
    list["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn wait_for_ids(api: &Proc, want: &[&str], within: Duration) -> Value {
    wait_for(&format!("workers {want:?}"), within, || async {
        let list = listed(api).await?;
        (ids(&list) == want).then_some(list)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_list_follows_processes_that_start_stop_and_die() {
    let db = TestDb::new().await;
    // The API stands aside, so the leader is one of the workers.
    let api = Proc::api(&db.url, "api", &["--no-maintenance"]);
    let flags = [
        "--lease-ttl",
        "1500ms",
        "--leader-ttl",
        "2s",
        "--concurrency",
        "3",
        "--queues",
        "a,b",
    ];
    let one = Proc::worker(&db.url, "w-one", &flags);
    let two = Proc::worker(&db.url, "w-two", &flags);
    let list = wait_for_ids(&api, &["w-one", "w-two"], Duration::from_secs(30)).await;
    let first = &list["workers"][0];
    assert_eq!(first["queues"], serde_json::json!(["a", "b"]));
    assert_eq!(first["concurrency"], 3);
    assert_eq!(first["inflight"], 0);
    assert!(first["started_at"].is_string() && first["last_seen_at"].is_string());

    // One of them leads, and the list says which.
    let list = wait_for("a worker to lead", Duration::from_secs(20), || async {
        let list = listed(&api).await?;
        let leaders: Vec<_> = list["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["leader"] == true)
            .collect();
        (leaders.len() == 1 && list["leader"]["holder"] == leaders[0]["id"]).then_some(list)
    })
    .await;
    assert!(list["leader"]["token"].as_i64().unwrap() >= 1);

    // The CLI shows the same.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args([
            "workers",
            "--url",
            &format!("http://127.0.0.1:{}", api.port),
        ])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    assert!(
        table.contains("w-one") && table.contains("w-two"),
        "{table}"
    );
    assert!(table.contains("maintainer: w-"), "{table}");

    // A clean stop removes its row at once; a new worker appears.
    one.terminate().await;
    let three = Proc::worker(&db.url, "w-three", &flags);
    wait_for_ids(&api, &["w-three", "w-two"], Duration::from_secs(30)).await;

    // A killed worker drops out within its lease TTL (plus a refresh interval).
    two.kill().await;
    wait_for_ids(&api, &["w-three"], Duration::from_secs(10)).await;
    // And the leader's janitor deletes its row for good.
    wait_for("the dead row deleted", Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from faultline.workers")
            .fetch_one(&db.pool)
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    three.terminate().await;
    wait_for_ids(&api, &[], Duration::from_secs(10)).await;
}
