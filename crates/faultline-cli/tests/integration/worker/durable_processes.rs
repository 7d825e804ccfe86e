//! Durable steps with real worker processes (the binary's drill kind `drill_steps`: each step a
//! `step_in` writing one row to `faultline_drill.step_rows` under its lease token): a worker
//! SIGKILLed after step 2 is followed by one that runs step 3 only; a worker SIGSTOPped inside
//! step 2 past its lease is overtaken, and on resume its record is refused and its row rolled
//! back; a durable sleep outlives the worker that started it, without spending an attempt.

use std::time::Duration;

use faultline::{JobId, JobState, NewJob, Store};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::harness::procs::Proc;
use crate::harness::{wait_for, TestDb};

async fn drill_tables(db: &TestDb) {
    sqlx::raw_sql(
        "create schema faultline_drill;
         create table faultline_drill.credits (job_id uuid not null, token bigint not null,
                                               at timestamptz not null default now());
         create table faultline_drill.step_rows (job_id uuid not null, step int not null,
                                                 token bigint not null,
                                                 at timestamptz not null default now());
         create table faultline_drill.executions (
             id bigserial primary key, job_id uuid not null, token bigint not null,
             attempt int not null, worker text not null, event text not null,
             detail text, at timestamptz not null default now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

fn worker(db: &TestDb, name: &str, extra: &[&str]) -> Proc {
    let mut flags = vec![
        "--drill-journal",
        "--lease-ttl",
        "1s",
        "--concurrency",
        "1",
        "--queues",
        "steps",
        "--reaper-interval",
        "200ms",
    ];
    flags.extend_from_slice(extra);
    Proc::worker(&db.url, name, &flags)
}

async fn enqueue(store: &Store, payload: Value) -> JobId {
    store
        .enqueue(NewJob::new("drill_steps", payload).with_queue("steps"))
        .await
        .unwrap()
        .into_job()
        .id
}

/// The recorded steps of `id`: (name, token).
async fn recorded(db: &TestDb, id: JobId) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select name, lease_token from faultline.job_steps where job_id = $1 order by name",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// The application rows of `id`: (step, token), by step.
async fn rows(db: &TestDb, id: JobId) -> Vec<(i32, i64)> {
    sqlx::query_as(
        "select step, token from faultline_drill.step_rows where job_id = $1 order by step, token",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn succeeded(store: &Store, id: JobId) -> faultline::Job {
    wait_for("the job to succeed", Duration::from_secs(60), || async {
        let job = store.get(id).await.ok()?;
        (job.state == JobState::Succeeded).then_some(job)
    })
    .await
}

/// Every step's row once, under the token its step was recorded with.
async fn assert_exactly_once(db: &TestDb, id: JobId, steps: i32) -> Vec<(i32, i64)> {
    let rows = rows(db, id).await;
    let recorded = recorded(db, id).await;
    assert_eq!(rows.len(), steps as usize, "one row per step: {rows:?}");
    for (step, token) in &rows {
        let name = format!("s{step}");
        assert!(
            recorded.iter().any(|(n, t)| *n == name && t == token),
            "row of step {step} under {token}, recorded {recorded:?}"
        );
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_step_two_is_followed_by_one_that_runs_step_three_only() {
    let db = TestDb::new().await;
    drill_tables(&db).await;
    let store = db.store();
    let id = enqueue(
        &store,
        json!({"steps": 3, "hold_after": 2, "hold_ms": 600_000}),
    )
    .await;
    let first = worker(&db, "first", &[]);
    wait_for(
        "steps 1 and 2 recorded",
        Duration::from_secs(60),
        || async { (recorded(&db, id).await.len() == 2).then_some(()) },
    )
    .await;
    first.kill().await;
    let _second = worker(&db, "second", &[]);
    let job = succeeded(&store, id).await;
    let rows = assert_exactly_once(&db, id, 3).await;
    // Steps 1 and 2 under the first claim's token, step 3 under the second's: ran once each.
    assert_eq!(rows[0].1, rows[1].1);
    assert!(rows[2].1 > rows[1].1);
    assert_eq!(job.lease_token, Some(rows[2].1));
    assert_eq!(job.attempts, 2, "the crash spent an attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_inside_step_two_is_overtaken_and_its_record_refused_on_resume() {
    let db = TestDb::new().await;
    drill_tables(&db).await;
    let store = db.store();
    // Each step waits 1.5 s inside its transaction: a window to stop the worker in step 2.
    let id = enqueue(&store, json!({"steps": 3, "ms": 1500})).await;
    // The stalled one runs no maintenance, so stopping it stops no reaper.
    let stalled = worker(&db, "stalled", &["--no-maintenance"]);
    wait_for("step 1 recorded", Duration::from_secs(60), || async {
        (recorded(&db, id).await.len() == 1).then_some(())
    })
    .await;
    stalled.signal(Signal::SIGSTOP);
    let first_token = recorded(&db, id).await[0].1;
    let _other = worker(&db, "other", &[]);
    let job = succeeded(&store, id).await;
    assert!(job.lease_token.unwrap() > first_token);
    // The stalled worker resumes inside step 2: its record is refused, its row rolled back.
    stalled.signal(Signal::SIGCONT);
    wait_for(
        "the stalled run to end",
        Duration::from_secs(30),
        || async {
            let ended: bool = sqlx::query_scalar(
                "select exists (select 1 from faultline_drill.executions
             where job_id = $1 and token = $2 and event <> 'started')",
            )
            .bind(id)
            .bind(first_token)
            .fetch_one(&db.pool)
            .await
            .ok()?;
            let open: bool = sqlx::query_scalar(
                "select exists (select 1 from pg_stat_activity
             where datname = current_database() and state like 'idle in transaction%')",
            )
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (ended && !open).then_some(())
        },
    )
    .await;
    let rows = assert_exactly_once(&db, id, 3).await;
    assert_eq!(rows[0].1, first_token, "step 1 stays the stalled worker's");
    assert!(rows[1..]
        .iter()
        .all(|(_, t)| *t == job.lease_token.unwrap()));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_sleep_outlives_the_worker_that_started_it_and_spends_no_attempt() {
    let db = TestDb::new().await;
    drill_tables(&db).await;
    let store = db.store();
    let id = enqueue(
        &store,
        json!({"steps": 2, "sleep_after": 1, "sleep_ms": 3000}),
    )
    .await;
    let first = worker(&db, "first", &[]);
    let slept = wait_for("step 1 and the sleep", Duration::from_secs(60), || async {
        let job = store.get(id).await.ok()?;
        (job.state == JobState::Queued && job.steps.len() == 2).then_some(job)
    })
    .await;
    assert_eq!(slept.attempts, 0, "sleeping hands the attempt back");
    assert!(slept.next_run_at > chrono::Utc::now());
    first.terminate().await;
    let _second = worker(&db, "second", &[]);
    let job = succeeded(&store, id).await;
    assert_eq!(job.attempts, 1);
    assert!(job.started_at.unwrap() >= slept.next_run_at - chrono::Duration::milliseconds(50));
    let rows = assert_exactly_once(&db, id, 2).await;
    assert!(
        rows[1].1 > rows[0].1,
        "the run after the sleep has a larger token"
    );
}
