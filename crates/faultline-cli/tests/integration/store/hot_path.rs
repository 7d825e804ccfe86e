//! The hot path under the conditions of a 10M-backlog death spiral: fenced reports reach their
//! rows through the primary key whatever the planner's statistics say, heartbeats leave every
//! index alone, and a worker whose reports fall behind stops claiming.

use std::sync::Arc;
use std::time::Duration;

use faultline::store::sql::{COMPLETE_BATCH, HEARTBEAT_BATCH};
use faultline::worker::{HandlerRegistry, JobContext, WorkerConfig};
use faultline::{JobState, NewJob};
use serde_json::{json, Value};

use crate::harness::worker::{config, Running};
use crate::harness::{wait_for, TestDb};

/// The plan of `sql` with `ids`/`tokens` bound, as Postgres' JSON.
async fn plan(db: &TestDb, sql: &str, ids: &[uuid::Uuid], tokens: &[i64]) -> Value {
    let mut tx = db.pool.begin().await.unwrap();
    let explain = format!("explain (format json) {sql}");
    let query = sqlx::query_scalar::<_, Value>(&explain)
        .bind(ids)
        .bind(tokens);
    // The third parameter: the TTL of a heartbeat, the counter shard of a completion.
    // A completion's fourth and fifth: the tokens that carry results, and the results (none).
    let query = if sql == COMPLETE_BATCH {
        query
            .bind(0i16)
            .bind(Vec::<i64>::new())
            .bind(Vec::<String>::new())
    } else {
        query.bind(30_000i64)
    };
    let plan = query.fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    plan
}

/// Every node of a plan, depth first.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    if let Some(list) = plan.as_array() {
        for item in list {
            nodes(item, out);
        }
        return;
    }
    if let Some(inner) = plan.get("Plan") {
        return nodes(inner, out);
    }
    out.push(plan.clone());
    if let Some(children) = plan.get("Plans") {
        nodes(children, out);
    }
}

#[tokio::test]
async fn reports_find_their_rows_by_primary_key_with_stale_statistics_and_many_running_jobs() {
    let db = TestDb::new().await;
    // Statistics taken while the table was small and nothing ran, then never refreshed: what
    // the planner believed during the spiral.
    for i in 0..20 {
        db.store()
            .enqueue(NewJob::new("k", json!({ "i": i })))
            .await
            .unwrap();
    }
    sqlx::raw_sql(
        "analyze faultline.jobs;
         alter table faultline.jobs set (autovacuum_enabled = false);
         insert into faultline.jobs (id, kind, state, attempts, lease_owner, lease_expires_at,
                                     lease_token, started_at)
         select gen_random_uuid(), 'k', 'running', 1, 'w', now() + interval '1 hour',
                nextval('faultline.lease_token_seq'), now()
         from generate_series(1, 50000);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let leases: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "select id, lease_token from faultline.jobs where state = 'running' order by id limit 128",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let (ids, tokens): (Vec<uuid::Uuid>, Vec<i64>) = leases.into_iter().unzip();
    for sql in [COMPLETE_BATCH, HEARTBEAT_BATCH] {
        let plan = plan(&db, sql, &ids, &tokens).await;
        let mut all = Vec::new();
        nodes(&plan, &mut all);
        let types: Vec<&str> = all.iter().filter_map(|n| n["Node Type"].as_str()).collect();
        assert!(
            !types
                .iter()
                .any(|t| matches!(*t, "Seq Scan" | "Hash Join" | "Merge Join" | "Nested Loop")),
            "the report scans or joins instead of probing: {types:?}\n{plan:#}"
        );
        let probes_by_id = all.iter().any(|n| {
            n["Index Cond"]
                .as_str()
                .is_some_and(|c| c.contains("id = ANY"))
        });
        assert!(probes_by_id, "no index condition on id: {plan:#}");
    }
}

#[tokio::test]
async fn a_heartbeat_is_a_hot_update() {
    let db = TestDb::new().await;
    let store = db.store();
    store.enqueue(NewJob::new("k", json!({}))).await.unwrap();
    let claimed = store
        .claim_batch(&["default".into()], "w", 1, Duration::from_secs(30))
        .await
        .unwrap();
    let hot_before: i64 = sqlx::query_scalar(
        "select n_tup_hot_upd from pg_stat_user_tables where relid = 'faultline.jobs'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for _ in 0..5 {
        store
            .heartbeat(&claimed[0].lease, Duration::from_secs(30))
            .await
            .unwrap();
    }
    // Table statistics reach the shared counters when a backend goes idle: wait for them.
    let hot = wait_for("the heartbeats to show in the statistics", Duration::from_secs(20), || async {
        let _ = sqlx::query("select pg_stat_clear_snapshot()").execute(&db.pool).await;
        let hot: i64 = sqlx::query_scalar(
            "select n_tup_hot_upd from pg_stat_user_tables where relid = 'faultline.jobs'::regclass",
        )
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (hot >= hot_before + 5).then_some(hot)
    })
    .await;
    assert!(
        hot - hot_before >= 5,
        "{} of 5 heartbeats were HOT",
        hot - hot_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_reports_fall_behind_stops_claiming() {
    let db = TestDb::new().await;
    // Completions take 300 ms each in the database (a slow, overloaded database); claims and
    // handlers are instant.
    sqlx::raw_sql(
        "create function faultline.slow_success() returns trigger language plpgsql as $$
         begin perform pg_sleep(0.3); return new; end $$;
         create trigger slow_success before insert on faultline.job_history for each row
           when (new.state = 'succeeded') execute function faultline.slow_success();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let store = db.store();
    store
        .enqueue_batch(
            (0..300)
                .map(|i| NewJob::new("quick", json!({ "i": i })))
                .collect(),
        )
        .await
        .unwrap();
    let mut registry = HandlerRegistry::new();
    registry.register_fn("quick", |_: JobContext, _: Value| async { Ok(()) });
    let concurrency = 4;
    let worker = Running::start(
        &store,
        registry,
        WorkerConfig {
            concurrency,
            lease_ttl: Duration::from_secs(30),
            ..config("backpressure")
        },
    );
    let max_held = Arc::new(std::sync::atomic::AtomicI64::new(0));
    // Sample for two seconds (a sampling window, not a wait for a condition).
    let mut every = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..40 {
        every.tick().await;
        let held: i64 =
            sqlx::query_scalar("select count(*) from faultline.jobs where state = 'running'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        max_held.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
    }
    let max_held = max_held.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        max_held <= 2 * i64::from(concurrency),
        "the worker held {max_held} leases with concurrency {concurrency}"
    );
    let succeeded: i64 =
        sqlx::query_scalar("select count(*) from faultline.job_history where state = 'succeeded'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(succeeded > 0, "the worker made progress");
    worker.stop().await;
    let left: i64 = sqlx::query_scalar("select count(*) from faultline.jobs where state = $1")
        .bind(JobState::Running)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "shutdown handed every lease back");
}
