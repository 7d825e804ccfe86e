//! The `faultline worker` binary as an operator runs it: flags, metrics, SIGTERM.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use faultline::{JobState, NewJob};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::harness::{wait_for, TestDb};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn worker_binary_runs_jobs_serves_metrics_and_exits_cleanly_on_sigterm() {
    let db = TestDb::new().await;
    let store = db.store();
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["worker", "--concurrency", "4", "--lease-ttl", "3s"])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("FAULTLINE_WORKER_ID", "binary-worker")
        .env("FAULTLINE_POLL_INTERVAL", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id = store
        .enqueue(NewJob::new("fail", json!({"times": 0})))
        .await
        .unwrap()
        .job()
        .id;
    let job = wait_for(
        "the binary to run the job",
        Duration::from_secs(30),
        || async {
            let job = store.get(id).await.ok()?;
            (job.state == JobState::Succeeded).then_some(job)
        },
    )
    .await;
    assert_eq!(job.lease_owner.as_deref(), Some("binary-worker"));

    // The counter moves just after the row commits: wait for it rather than race it.
    let expected = "faultline_jobs_succeeded_total{kind=\"fail\",queue=\"default\"} 1";
    let body = wait_for(
        "the success to show in /metrics",
        Duration::from_secs(10),
        || async {
            let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .ok()?;
            let body = response.text().await.ok()?;
            body.contains(expected).then_some(body)
        },
    )
    .await;
    assert!(body.contains("faultline_db_up 1"), "{body}");

    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the worker exits after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(stderr.contains("worker stopped"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn worker_binary_names_the_bad_setting() {
    let cases: [(&[&str], &str); 4] = [
        (&["--lease-ttl", "banana"], "--lease-ttl"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--metrics-listen", "nowhere"], "--metrics-listen"),
        (&["--retry-base", "2h", "--retry-cap", "1h"], "--retry-base"),
    ];
    for (args, named) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
            .arg("worker")
            .args(args)
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn worker_binary_refuses_a_database_without_the_schema() {
    let db = TestDb::empty().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .arg("worker")
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run `faultline migrate`"), "{stderr}");
}
