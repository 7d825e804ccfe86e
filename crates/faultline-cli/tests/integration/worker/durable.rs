//! Durable steps, sleeps and signals (docs/durable.md), in process: a step is recorded once,
//! under the lease that ran it, and a stale holder records nothing (its `step_in` writes roll
//! back); a handler that failed after its second step runs again from its third; a sleep keeps
//! its first deadline and spends no attempt; a signal sent before or after the wait reaches
//! it, a duplicate keeps the first, a wait times out, a parked job can be cancelled. The same
//! over HTTP for workers in other languages. (The crash and stall proofs with real processes:
//! `durable_processes.rs`.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use faultline::http::ApiConfig;
use faultline::store::Signalled;
use faultline::testing::{self, RunResult};
use faultline::worker::{HandlerRegistry, JobContext, JobError};
use faultline::{JobState, NewJob, Payload, Store, StoreError};
use serde_json::json;

use crate::harness::http::{call, router};
use crate::harness::{wait_for, TestDb};

async fn enqueue(store: &Store, kind: &str) -> faultline::JobId {
    store
        .enqueue(NewJob::new(kind, json!({})).with_queue("durable"))
        .await
        .unwrap()
        .into_job()
        .id
}

async fn claim(store: &Store) -> faultline::Claimed {
    store
        .claim_batch(&["durable".to_owned()], "w", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .expect("a job to claim")
}

async fn app_table(db: &TestDb) {
    sqlx::raw_sql(
        "create table app_rows (job_id uuid not null, step text not null, token bigint not null)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_step_is_recorded_once_under_its_lease_and_a_stale_holder_records_nothing() {
    let db = TestDb::new().await;
    let store = db.store();
    app_table(&db).await;
    let id = enqueue(&store, "k").await;
    let first = claim(&store).await;

    let one = Payload::from_json(r#"{"charge":"ch_1","cents":12345678901234567890}"#).unwrap();
    let step = store
        .record_step(&first.lease, "charge", &one)
        .await
        .unwrap();
    assert_eq!(step.result.as_ref().map(Payload::get), Some(one.get()));
    assert_eq!((step.lease_token, step.attempt), (first.lease.token, 1));
    // The same name again: the first result stands.
    let other = Payload::from_json(r#"{"charge":"ch_2"}"#).unwrap();
    let again = store
        .record_step(&first.lease, "charge", &other)
        .await
        .unwrap();
    assert_eq!(again.result.as_ref().map(Payload::get), Some(one.get()));

    // The lease is lost (released and claimed by another): the old holder records nothing,
    // and its step_in transaction rolls back with its own write.
    store.release(&first.lease).await.unwrap();
    let second = claim(&store).await;
    assert!(second.lease.token > first.lease.token);
    let refused = store
        .record_step(&first.lease, "email", &Payload::null())
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "{refused:?}"
    );
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("insert into app_rows values ($1, 'email', $2)")
        .bind(id)
        .bind(first.lease.token)
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = store
        .record_step_in(&mut tx, &first.lease, "email", &Payload::null())
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "{refused:?}"
    );
    drop(tx);
    // The holder records it.
    store
        .record_step(&second.lease, "email", &Payload::null())
        .await
        .unwrap();
    let steps = store.get(id).await.unwrap().steps;
    let names: Vec<(&str, i64)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.lease_token))
        .collect();
    assert_eq!(
        names,
        [("charge", first.lease.token), ("email", second.lease.token)]
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from app_rows")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the stale holder's write rolled back");
}

#[tokio::test]
async fn a_handler_that_failed_after_two_steps_runs_again_from_the_third() {
    let db = TestDb::new().await;
    let store = db.store();
    app_table(&db).await;
    let runs: Arc<[AtomicU32; 3]> = Arc::new(Default::default());
    let mut registry = HandlerRegistry::new();
    let (counted, pool) = (runs.clone(), db.pool.clone());
    registry.register_fn("three", move |ctx: JobContext, _: Payload| {
        let (runs, pool) = (counted.clone(), pool.clone());
        async move {
            let a: u32 = ctx
                .step("one", async {
                    runs[0].fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                })
                .await?;
            let mut tx = pool.begin().await?;
            let (id, token) = (ctx.job_id, ctx.lease_token);
            let b: u32 = ctx
                .step_in(&mut tx, "two", async |conn: &mut sqlx::PgConnection| {
                    runs[1].fetch_add(1, Ordering::SeqCst);
                    sqlx::query("insert into app_rows values ($1, 'two', $2)")
                        .bind(id)
                        .bind(token)
                        .execute(&mut *conn)
                        .await?;
                    Ok(a + 1)
                })
                .await?;
            tx.commit().await?;
            let c: u32 = ctx
                .step("three", async {
                    if runs[2].fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(JobError::retryable("the mail server is down"));
                    }
                    Ok(b + 1)
                })
                .await?;
            // The same name twice: the first result, and the step does not run again.
            let again: u32 = ctx.step("one", async { Ok(99) }).await?;
            Ok(json!({"sum": a + b + c, "again": again}))
        }
    });
    let id = enqueue(&store, "three").await;
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    assert!(matches!(ran, RunResult::Retrying(_)), "{ran:?}");
    testing::make_due(&store, &["durable"]).await.unwrap();
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    assert_eq!(ran, RunResult::Succeeded(json!({"sum": 6, "again": 1})));
    let counts: Vec<u32> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, [1, 1, 2], "steps one and two ran once");
    let job = store.get(id).await.unwrap();
    let steps: Vec<(&str, i32)> = job
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.attempt))
        .collect();
    assert_eq!(steps, [("one", 1), ("two", 1), ("three", 2)]);
    let rows: i64 = sqlx::query_scalar("select count(*) from app_rows")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_sleep_keeps_its_first_deadline_and_spends_no_attempt() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_fn("nap", |ctx: JobContext, _: Payload| async move {
        ctx.sleep(Duration::from_secs(3600)).await?;
        Ok("woke")
    });
    let id = enqueue(&store, "nap").await;
    let before = store.get(id).await.unwrap();
    assert_eq!(
        testing::run_job(&store, &registry, id).await.unwrap(),
        RunResult::Suspended
    );
    let slept = store.get(id).await.unwrap();
    assert_eq!((slept.state, slept.attempts), (JobState::Queued, 0));
    let due = slept.next_run_at;
    assert!(due > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert!(slept.errors.is_empty());
    let first_token = slept.lease_token.unwrap();

    // Run again before its time (as a worker would after `make_due`): it sleeps again until
    // the same deadline, not another hour.
    testing::make_due(&store, &["durable"]).await.unwrap();
    assert_eq!(
        testing::run_job(&store, &registry, id).await.unwrap(),
        RunResult::Suspended
    );
    let again = store.get(id).await.unwrap();
    assert!(
        (again.next_run_at - due).num_seconds().abs() <= 1,
        "{} vs {due}",
        again.next_run_at
    );
    assert!(again.lease_token.unwrap() > first_token);

    // Its time comes: it goes on, on its first attempt still.
    sqlx::query(
        "update faultline.job_steps set result = json_build_object('until', now() - interval '1 second')
         where job_id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    testing::make_due(&store, &["durable"]).await.unwrap();
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    assert_eq!(ran, RunResult::Succeeded(json!("woke")));
    let done = store.get(id).await.unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1));
    assert_eq!(before.attempts, 0);
}

fn waiter(registry: &mut HandlerRegistry, timeout: Duration) {
    registry.register_fn("refund", move |ctx: JobContext, _: Payload| async move {
        let got = ctx.wait_for_signal("refund", timeout).await?;
        Ok(json!({"got": got.map(|p| p.to_value())}))
    });
}

#[tokio::test]
async fn a_signal_reaches_its_wait_sent_before_or_after_and_the_first_is_kept() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    waiter(&mut registry, Duration::from_secs(3600));

    // Sent before the wait: the handler gets it at once; a second one is dropped.
    let early = enqueue(&store, "refund").await;
    let payload = Payload::from_json(r#"{"cents":5}"#).unwrap();
    let sent = store.send_signal(early, "refund", &payload).await.unwrap();
    assert_eq!(sent, Signalled::Kept);
    let payload = Payload::from_json(r#"{"cents":6}"#).unwrap();
    let sent = store.send_signal(early, "refund", &payload).await.unwrap();
    assert_eq!(sent, Signalled::Duplicate);
    let ran = testing::run_job(&store, &registry, early).await.unwrap();
    assert_eq!(ran, RunResult::Succeeded(json!({"got": {"cents": 5}})));

    // Sent after: the job parks in `waiting` (attempt handed back), shows what it waits for,
    // and the signal queues it; then the handler gets it.
    let late = enqueue(&store, "refund").await;
    assert_eq!(
        testing::run_job(&store, &registry, late).await.unwrap(),
        RunResult::Suspended
    );
    let parked = store.get(late).await.unwrap();
    assert_eq!((parked.state, parked.attempts), (JobState::Waiting, 0));
    let waiting = parked.waiting_for.expect("waiting_for");
    assert_eq!(waiting.signal, "refund");
    assert!(waiting.until > chrono::Utc::now() + chrono::Duration::minutes(59));
    let sent = store
        .send_signal(late, "refund", &Payload::null())
        .await
        .unwrap();
    assert_eq!(sent, Signalled::Kept);
    let woken = store.get(late).await.unwrap();
    assert_eq!((woken.state, woken.waiting_for), (JobState::Queued, None));
    let ran = testing::run_job(&store, &registry, late).await.unwrap();
    assert_eq!(ran, RunResult::Succeeded(json!({"got": null})));
    assert_eq!(store.get(late).await.unwrap().attempts, 1);

    // A signal to a finished job: refused; to an unknown one: not found.
    let refused = store.send_signal(late, "refund", &Payload::null()).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidTransition { .. })),
        "{refused:?}"
    );
    let unknown = store
        .send_signal(faultline::JobId::new(), "refund", &Payload::null())
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_wait_times_out_and_a_parked_job_can_be_cancelled() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    waiter(&mut registry, Duration::from_millis(300));
    let id = enqueue(&store, "refund").await;
    assert_eq!(
        testing::run_job(&store, &registry, id).await.unwrap(),
        RunResult::Suspended
    );
    assert_eq!(store.get(id).await.unwrap().state, JobState::Waiting);
    wait_for("the wait to time out", Duration::from_secs(30), || async {
        (store.wake_timed_out_waits().await.unwrap() == 1).then_some(())
    })
    .await;
    let ran = testing::run_job(&store, &registry, id).await.unwrap();
    assert_eq!(ran, RunResult::Succeeded(json!({"got": null})));
    // The outcome is recorded: a signal that comes now changes nothing for it.
    let steps: Vec<String> = store
        .get(id)
        .await
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(steps, ["faultline:wait:refund", "faultline:signal:refund"]);

    let parked = enqueue(&store, "refund").await;
    registry = HandlerRegistry::new();
    waiter(&mut registry, Duration::from_secs(3600));
    assert_eq!(
        testing::run_job(&store, &registry, parked).await.unwrap(),
        RunResult::Suspended
    );
    let cancelled = store.cancel(parked).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(store.wake_timed_out_waits().await.unwrap(), 0);
}

#[tokio::test]
async fn over_http_a_remote_worker_records_steps_sleeps_and_waits_under_its_lease() {
    let db = TestDb::new().await;
    let store = db.store();
    let (api, metrics) = router(&db, ApiConfig::default());
    let id = enqueue(&store, "remote").await;
    let lease = claim(&store).await.lease;
    let token = lease.token;
    let at = |route: &str| format!("/v1/jobs/{id}/{route}");

    let (status, _, step) = call(
        &api,
        Method::PUT,
        &at("steps/charge"),
        Some(json!({"lease_token": token, "result": {"ch": 1}})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{step}");
    let (status, _, step) = call(
        &api,
        Method::PUT,
        &at("steps/charge"),
        Some(json!({"lease_token": token, "result": {"ch": 2}})),
        &[],
    )
    .await;
    assert_eq!(
        (status, step["result"].clone()),
        (StatusCode::OK, json!({"ch": 1}))
    );
    let (status, _, body) = call(
        &api,
        Method::PUT,
        &at("steps/email"),
        Some(json!({"lease_token": token + 1})),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("lease_lost"))
    );
    let (status, _, body) = call(
        &api,
        Method::PUT,
        &at("steps/faultline:x"),
        Some(json!({"lease_token": token})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, _, steps) = call(&api, Method::GET, &at("steps"), None, &[]).await;
    assert_eq!(steps["steps"].as_array().unwrap().len(), 1);

    // Wait: parked; the job shows it; a signal queues it; the next claim's wait gets it.
    let (status, _, waited) = call(
        &api,
        Method::POST,
        &at("wait"),
        Some(json!({"lease_token": token, "signal": "go", "timeout_ms": 3_600_000})),
        &[],
    )
    .await;
    assert_eq!(
        (status, waited["outcome"].clone()),
        (StatusCode::OK, json!("parked")),
        "{waited}"
    );
    let (_, _, job) = call(&api, Method::GET, &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(
        (job["state"].clone(), job["waiting_for"]["signal"].clone()),
        (json!("waiting"), json!("go"))
    );
    let (status, _, sent) = call(
        &api,
        Method::POST,
        &at("signals/go"),
        Some(json!({"payload": {"ok": true}})),
        &[],
    )
    .await;
    assert_eq!(
        (status, sent["kept"].clone()),
        (StatusCode::ACCEPTED, json!(true))
    );
    let (status, _, sent) = call(&api, Method::POST, &at("signals/go"), Some(json!({})), &[]).await;
    assert_eq!(
        (status, sent["kept"].clone()),
        (StatusCode::ACCEPTED, json!(false))
    );
    let token = claim(&store).await.lease.token;
    let (_, _, waited) = call(
        &api,
        Method::POST,
        &at("wait"),
        Some(json!({"lease_token": token, "signal": "go", "timeout_ms": 3_600_000})),
        &[],
    )
    .await;
    assert_eq!(
        (waited["outcome"].clone(), waited["payload"].clone()),
        (json!("signalled"), json!({"ok": true}))
    );

    // Counted: the one step recorded and the one signal kept (the duplicate is not).
    let text = metrics.render();
    assert!(text.contains("faultline_steps_recorded_total 1"), "{text}");
    assert!(
        text.contains("faultline_signals_received_total 1"),
        "{text}"
    );

    // Sleep: the job is put back until then; the attempt is not spent.
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    let (_, _, slept) = call(
        &api,
        Method::POST,
        &at("sleep"),
        Some(json!({"lease_token": token, "until": until})),
        &[],
    )
    .await;
    assert_eq!(slept["state"], "sleeping", "{slept}");
    let job = store.get(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));

    // Signals to unknown and finished jobs.
    let (status, _, _) = call(
        &api,
        Method::POST,
        &format!("/v1/jobs/{}/signals/go", faultline::JobId::new()),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    store.cancel(id).await.unwrap();
    let (status, _, body) = call(
        &api,
        Method::POST,
        &at("signals/late"),
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let waited = store
        .wait_for_signal(&lease, "other", Duration::from_secs(1))
        .await;
    assert!(
        matches!(waited, Err(StoreError::LeaseLost { .. })),
        "{waited:?}"
    );
}
