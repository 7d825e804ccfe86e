//! docs/library.md transactional completion: a handler's own writes and its job's success commit in
//! one transaction, exactly once; a holder whose lease was lost is refused and rolls back.

use std::time::Duration;

use faultline::worker::{JobContext, JobError};
use faultline::{JobState, LeaseLostReason, NewJob, StoreError};
use rand::Rng;
use serde_json::json;

use crate::harness::worker::{builtins, config, wait_for_state, Running};
use crate::harness::{claim_one, wait_for, TestDb};

async fn app_table(db: &TestDb) {
    sqlx::query("create table app_rows (job_id uuid not null, token bigint not null)")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn rows_of(db: &TestDb, id: faultline::JobId) -> i64 {
    sqlx::query_scalar("select count(*) from app_rows where job_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_writes_and_completes_in_one_transaction_and_is_not_reported_twice() {
    let db = TestDb::new().await;
    app_table(&db).await;
    let store = db.store();
    let pool = db.pool.clone();
    let mut registry = builtins();
    registry.register_fn("credit", move |ctx: JobContext, _: serde_json::Value| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.map_err(JobError::retryable)?;
            sqlx::query("insert into app_rows values ($1, $2)")
                .bind(ctx.job_id)
                .bind(ctx.lease_token)
                .execute(&mut *tx)
                .await
                .map_err(JobError::retryable)?;
            ctx.complete_and_commit(tx, ())
                .await
                .map_err(JobError::retryable)?;
            Ok(())
        }
    });
    let worker = Running::start(&store, registry, config("tx"));
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            store
                .enqueue(NewJob::new("credit", json!({})))
                .await
                .unwrap()
                .job()
                .id,
        );
    }
    for id in &ids {
        let job = wait_for_state(&store, *id, JobState::Succeeded, Duration::from_secs(30)).await;
        assert_eq!(job.attempts, 1);
        assert_eq!(rows_of(&db, *id).await, 1);
    }
    let text = worker.metrics_text();
    worker.stop().await;
    assert!(
        text.contains("faultline_jobs_succeeded_total{kind=\"credit\",queue=\"default\"} 20"),
        "{text}"
    );
    assert!(
        !text.contains("faultline_stale_completions_total{queue=\"default\"} 1"),
        "the worker reported a committed job again: {text}"
    );
}

/// Many rounds, in random orders: A claims, writes in its transaction and stalls past its lease;
/// the reaper takes the job back; B claims, writes and completes in its transaction. Whichever
/// commits first, A's completion is refused with `LeaseLost`, its transaction rolls back, and
/// the application table has exactly one row per job: B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_refused_and_its_writes_roll_back_in_every_order() {
    let db = TestDb::new().await;
    app_table(&db).await;
    let store = db.store();
    let mut rng = rand::thread_rng();
    for round in 0..25 {
        let id = store
            .enqueue(NewJob::new("credit", json!({"round": round})))
            .await
            .unwrap()
            .job()
            .id;
        let ttl = Duration::from_millis(rng.gen_range(20..120));
        let a = claim_one(&store, "a", ttl).await.lease;
        let mut tx_a = db.pool.begin().await.unwrap();
        sqlx::query("insert into app_rows values ($1, $2)")
            .bind(id)
            .bind(a.token)
            .execute(&mut *tx_a)
            .await
            .unwrap();
        // A stalls: its lease runs out and the reaper takes the job back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.reap_expired(10).await.unwrap().total() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: never reaped"
            );
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1..20))).await;
        }
        let b = claim_one(&store, "b", Duration::from_secs(30)).await.lease;
        let b_first = rng.gen_bool(0.5);
        let commit_b = || async {
            let mut tx_b = db.pool.begin().await.unwrap();
            sqlx::query("insert into app_rows values ($1, $2)")
                .bind(id)
                .bind(b.token)
                .execute(&mut *tx_b)
                .await
                .unwrap();
            store
                .complete_in(&mut tx_b, &b, &serde_json::Value::Null)
                .await
                .unwrap();
            tx_b.commit().await.unwrap();
        };
        if b_first {
            commit_b().await;
        }
        match store
            .complete_in(&mut tx_a, &a, &serde_json::Value::Null)
            .await
        {
            Err(StoreError::LeaseLost { reason, .. }) => {
                // Another lease of the job exists, live or finished: superseded either way.
                let expected = LeaseLostReason::Superseded;
                assert_eq!(reason, expected, "round {round}");
                tx_a.rollback().await.unwrap();
            }
            other => panic!("round {round}: a stale completion was accepted: {other:?}"),
        }
        if !b_first {
            commit_b().await;
        }
        assert_eq!(rows_of(&db, id).await, 1, "round {round}");
        let token: i64 = sqlx::query_scalar("select token from app_rows where job_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(token, b.token, "round {round}: the holder's row");
        let job = store.get(id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.lease_token, Some(b.token));
    }
}

/// The journal's events for `job` by `worker`.
async fn journal_of(db: &TestDb, job: faultline::JobId, worker: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select event, token from faultline_drill.executions
         where job_id = $1 and worker = $2 order by id",
    )
    .bind(job)
    .bind(worker)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Real worker processes, a real SIGSTOP: the holder of a `drill_credit` job (which inserts an
/// application row, waits, and completes in the same transaction) is stopped at a random point
/// of its run, past its lease; a second worker takes the job over and commits; the stalled one
/// resumes and tries to commit. Round after round, with random pauses: exactly one application
/// row, the second worker's, and one success. (A holder frozen inside its commit keeps the
/// job's row locked, so nobody can take over; it commits on resume: one row, its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_holder_resumes_and_its_transaction_is_refused_round_after_round() {
    use crate::harness::procs::Proc;
    use nix::sys::signal::Signal;

    let db = TestDb::new().await;
    sqlx::raw_sql(
        "create schema faultline_drill;
         create table faultline_drill.credits (job_id uuid not null, token bigint not null,
                                               at timestamptz not null default now());
         create table faultline_drill.executions (
             id bigserial primary key, job_id uuid not null, token bigint not null,
             attempt int not null, worker text not null, event text not null,
             detail text, at timestamptz not null default now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let store = db.store();
    // The first works without maintenance, so stopping it stops no reaper; the second reaps.
    let first = Proc::worker(
        &db.url,
        "first",
        &[
            "--drill-journal",
            "--lease-ttl",
            "1s",
            "--concurrency",
            "1",
            "--no-maintenance",
        ],
    );
    let second = Proc::worker(
        &db.url,
        "second",
        &[
            "--drill-journal",
            "--lease-ttl",
            "1s",
            "--concurrency",
            "1",
            "--reaper-interval",
            "200ms",
        ],
    );
    for proc in [&first, &second] {
        wait_for(
            &format!("{} to be up", proc.name),
            Duration::from_secs(30),
            || async { proc.metric("faultline_db_up").await.filter(|up| *up == 1.0) },
        )
        .await;
    }
    let mut rng = rand::thread_rng();
    let mut takeovers = 0;
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        second.signal(Signal::SIGSTOP);
        let ms: u64 = rng.gen_range(200..800);
        let id = store
            .enqueue(NewJob::new("drill_credit", json!({ "ms": ms })).with_max_attempts(5))
            .await
            .unwrap()
            .job()
            .id;
        let (_, first_token) = wait_for(
            &format!("round {round}: first to start the job"),
            Duration::from_secs(30),
            || async { journal_of(&db, id, "first").await.into_iter().next() },
        )
        .await;
        // A random point of the run: before the insert, inside the transaction's wait, or
        // about to commit (every other round, in its last 60 ms: on resume, the handler's commit
        // then races the heartbeat that learns the lease is lost).
        let pause = if round % 2 == 0 {
            rng.gen_range(0..ms)
        } else {
            rng.gen_range(ms - 60..ms)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        first.signal(Signal::SIGSTOP);
        second.signal(Signal::SIGCONT);
        // Either the second takes over, or the first froze inside its commit: its completion
        // already deleted the job's row, uncommitted, and holds the row's lock, which the
        // reaper rightly skips; then nobody else can run the job, and the first commits when it
        // resumes. Its completion is the only statement of ours that starts `with gone as`.
        let outcome = wait_for(
            &format!("round {round}: second to take over, or first frozen in its commit"),
            Duration::from_secs(60),
            || async {
                let job = store.get(id).await.ok()?;
                if job.state == JobState::Succeeded {
                    return Some(Some(job));
                }
                let frozen: bool = sqlx::query_scalar(
                    "select exists (select 1 from pg_stat_activity
                     where datname = current_database() and state = 'idle in transaction'
                       and query like 'with gone as (%')",
                )
                .fetch_one(&db.pool)
                .await
                .ok()?;
                frozen.then_some(None)
            },
        )
        .await;
        first.signal(Signal::SIGCONT);
        let job = match outcome {
            Some(job) => job,
            None => {
                wait_for(
                    &format!("round {round}: the first to commit once resumed"),
                    Duration::from_secs(30),
                    || async {
                        let job = store.get(id).await.ok()?;
                        (job.state == JobState::Succeeded).then_some(job)
                    },
                )
                .await
            }
        };
        // The first run ends: refused at commit or stopped by its heartbeat if the second took
        // over; succeeded if it was the holder all along.
        let ended = wait_for(
            &format!("round {round}: the first run to end"),
            Duration::from_secs(30),
            || async {
                let events = journal_of(&db, id, "first").await;
                let end = events
                    .into_iter()
                    .find(|(event, token)| *token == first_token && event != "started")?;
                Some(end.0)
            },
        )
        .await;
        eprintln!("round {round}: stalled {pause} ms into a {ms} ms run; it ended {ended:?}");
        let holder = job.lease_owner.clone();
        if holder.as_deref() == Some("second") {
            takeovers += 1;
            assert_ne!(ended, "succeeded", "round {round}: the stale run succeeded");
            assert!(job.lease_token.unwrap() > first_token, "round {round}");
        } else {
            assert_eq!(holder.as_deref(), Some("first"), "round {round}");
            assert_eq!(ended, "succeeded", "round {round}: the holder's run");
            assert_eq!(job.lease_token, Some(first_token), "round {round}");
        }
        let rows: Vec<i64> =
            sqlx::query_scalar("select token from faultline_drill.credits where job_id = $1")
                .bind(id)
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![job.lease_token.unwrap()],
            "round {round}: one row, the holder's"
        );
        let successes: i64 = sqlx::query_scalar(
            "select count(*) from faultline_drill.executions where job_id = $1 and event = 'succeeded'",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(successes, 1, "round {round}: succeeded once");
    }
    // A freeze inside the commit's few milliseconds is rare; most rounds are takeovers.
    assert!(takeovers > 0, "no round was a takeover");
    first.kill().await;
    second.kill().await;
}
