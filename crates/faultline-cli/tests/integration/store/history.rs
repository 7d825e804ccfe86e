//! Live jobs and history apart (docs/operations.md): a finished job leaves the live table in the statement
//! that finishes it and stays readable from history; idempotency keys hold across the move; an
//! upgrade from the single-table schema moves every finished job and keeps every key.

use std::collections::HashSet;
use std::time::Duration;

use faultline::db::MIGRATOR;
use faultline::{JobFilter, JobState, NewJob, Store};
use serde_json::json;
use sqlx::migrate::Migrator;

use crate::harness::TestDb;

async fn live_and_history(db: &TestDb, id: faultline::JobId) -> (i64, i64) {
    let live: i64 = sqlx::query_scalar("select count(*) from faultline.jobs where id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let history: i64 =
        sqlx::query_scalar("select count(*) from faultline.job_history where id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    (live, history)
}

#[tokio::test]
async fn every_finishing_transition_moves_the_job_to_history_where_it_stays_readable() {
    let db = TestDb::new().await;
    let store = db.store();
    let ids: Vec<_> = store
        .enqueue_batch((0..5).map(|i| NewJob::new("k", json!(i))).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|item| match item {
            faultline::BatchItem::Created(job) => job.id,
            other => panic!("{other:?}"),
        })
        .collect();
    let claimed = store
        .claim_batch(&["default".into()], "w", 4, Duration::from_secs(60))
        .await
        .unwrap();
    store.complete(&claimed[0].lease).await.unwrap();
    store
        .fail_attempt(&claimed[1].lease, "no", false)
        .await
        .unwrap();
    store.cancel(claimed[2].job.id).await.unwrap();
    // The last one with attempts left is retried in place, still live.
    store
        .fail_attempt(&claimed[3].lease, "again", true)
        .await
        .unwrap();
    for (c, state) in [
        (&claimed[0], JobState::Succeeded),
        (&claimed[1], JobState::Failed),
        (&claimed[2], JobState::Cancelled),
    ] {
        assert_eq!(live_and_history(&db, c.job.id).await, (0, 1), "{state}");
        let job = store.get(c.job.id).await.unwrap();
        assert_eq!(job.state, state);
        assert!(job.finished_at.is_some());
    }
    assert_eq!(live_and_history(&db, claimed[3].job.id).await, (1, 0));
    // A listing sees both tables, newest first, without duplicates.
    let page = store.list(&JobFilter::default(), None, 10).await.unwrap();
    let listed: Vec<_> = page.jobs.iter().map(|j| j.id).collect();
    let mut expected = ids.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(listed, expected);
    let failed = store
        .list(
            &JobFilter {
                state: Some(JobState::Failed),
                ..JobFilter::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(failed.jobs.len(), 1);
    // Counts: live ones counted, finished ones from the counters.
    let stats = store.queue_stats().await.unwrap();
    let s = &stats[0];
    assert_eq!(
        (s.queued, s.running, s.succeeded, s.failed, s.cancelled),
        (2, 0, 1, 1, 1)
    );
    // Retry moves a finished job back, and its count with it.
    let again = store.retry(claimed[1].job.id).await.unwrap();
    assert_eq!(again.state, JobState::Queued);
    assert_eq!(live_and_history(&db, claimed[1].job.id).await, (1, 0));
    assert_eq!(store.queue_stats().await.unwrap()[0].failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_submissions_of_one_key_while_its_job_finishes_and_moves_make_one_job() {
    let db = TestDb::new().await;
    let store = db.store();
    for round in 0..5 {
        let key = format!("move-race-{round}");
        let first = store
            .enqueue(NewJob::new("k", json!({"n": 1})).with_idempotency_key(&key))
            .await
            .unwrap()
            .into_job();
        let claimed = store
            .claim_batch(&["default".into()], "w", 1, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claimed[0].job.id, first.id);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (store, key) = (store.clone(), key.clone());
            tasks.spawn(async move {
                store
                    .enqueue(NewJob::new("k", json!({"n": 1})).with_idempotency_key(key))
                    .await
            });
        }
        // The job finishes (and moves to history) in the middle of the storm.
        let finisher = {
            let store: Store = store.clone();
            let lease = claimed[0].lease.clone();
            tokio::spawn(async move { store.complete(&lease).await })
        };
        let mut ids = HashSet::new();
        while let Some(result) = tasks.join_next().await {
            let enqueued = result.unwrap().unwrap();
            assert!(
                enqueued.was_replayed(),
                "a second job was created for {key}"
            );
            ids.insert(enqueued.job().id);
        }
        finisher.await.unwrap().unwrap();
        assert_eq!(ids.len(), 1);
        assert!(ids.contains(&first.id));
        let holders: i64 = sqlx::query_scalar(
            "select count(*) from faultline.all_jobs where idempotency_key = $1",
        )
        .bind(&key)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(holders, 1, "one job per key across live and history");
        // The key stays taken while its job is retained, now from history.
        let again = store
            .enqueue(NewJob::new("k", json!({"n": 1})).with_idempotency_key(&key))
            .await
            .unwrap();
        assert!(again.was_replayed());
        let conflict = store
            .enqueue(NewJob::new("k", json!({"n": 2})).with_idempotency_key(&key))
            .await;
        assert!(matches!(
            conflict,
            Err(faultline::StoreError::IdempotencyConflict { .. })
        ));
    }
}

/// An empty database at the schema of the migrations before `version`.
async fn schema_before(version: i64) -> TestDb {
    let db = TestDb::empty().await;
    let previous = Migrator {
        migrations: MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..Migrator::DEFAULT
    };
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql("create schema faultline; set search_path to faultline")
        .execute(&mut *conn)
        .await
        .unwrap();
    previous.run(&mut *conn).await.unwrap();
    db
}

#[tokio::test]
async fn an_upgrade_from_the_single_table_schema_keeps_every_job_and_every_key() {
    // The schema as the previous release left it: its single migration (payload `jsonb`,
    // every job in one table).
    let db = schema_before(20261201000000).await;
    // Jobs in every state, written as that release wrote them.
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, state, idempotency_key, request_fingerprint,
                                     attempts, lease_owner, lease_token, lease_expires_at,
                                     started_at, finished_at, payload)
         values ('00000000-0000-7000-8000-000000000001', 'k', 'queued', 'key-q', '\\x01', 0,
                 null, null, null, null, null, '{\"n\": 12345678901234567890123, \"a\": [1.50]}'),
                ('00000000-0000-7000-8000-000000000002', 'k', 'running', 'key-r', '\\x02', 1,
                 'w', 7, now() + interval '1 hour', now(), null, '{}'),
                ('00000000-0000-7000-8000-000000000003', 'k', 'succeeded', 'key-s', '\\x03', 1,
                 'w', 8, null, now(), now(), '{}'),
                ('00000000-0000-7000-8000-000000000004', 'k', 'failed', 'key-f', '\\x04', 5,
                 'w', 9, null, now(), now() - interval '1 hour', '{}'),
                ('00000000-0000-7000-8000-000000000005', 'k', 'cancelled', null, null, 0,
                 null, null, null, null, now(), '{}');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    faultline::db::migrate(&db.pool).await.unwrap();
    assert!(faultline::db::schema_is_current(&db.pool).await.unwrap());

    let store = db.store();
    let expect = [
        (1, JobState::Queued, (1, 0)),
        (2, JobState::Running, (1, 0)),
        (3, JobState::Succeeded, (0, 1)),
        (4, JobState::Failed, (0, 1)),
        (5, JobState::Cancelled, (0, 1)),
    ];
    for (n, state, place) in expect {
        let id: faultline::JobId = format!("00000000-0000-7000-8000-00000000000{n}")
            .parse()
            .unwrap();
        assert_eq!(store.get(id).await.unwrap().state, state, "job {n}");
        assert_eq!(live_and_history(&db, id).await, place, "job {n}");
    }
    let stats = store.queue_stats().await.unwrap();
    let s = &stats[0];
    assert_eq!(
        (s.queued, s.running, s.succeeded, s.failed, s.cancelled),
        (1, 1, 1, 1, 1)
    );
    // The payload survived the change of column type, digit for digit.
    let queued = store
        .get("00000000-0000-7000-8000-000000000001".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        queued.payload.to_string(),
        r#"{"a":[1.50],"n":12345678901234567890123}"#
    );
    // Every key is still enforced, live or moved: a different request under it conflicts.
    for key in ["key-q", "key-r", "key-s", "key-f"] {
        let result = store
            .enqueue(NewJob::new("other", json!({})).with_idempotency_key(key))
            .await;
        assert!(
            matches!(
                result,
                Err(faultline::StoreError::IdempotencyConflict { .. })
            ),
            "{key}: {result:?}"
        );
    }
    // The moved failed job can be retried back into the live table.
    let retried = store
        .retry("00000000-0000-7000-8000-000000000004".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Queued);
}

#[tokio::test]
async fn an_upgrade_to_keys_and_schedules_keeps_every_job_lease_and_setting() {
    // The schema before per-key concurrency and schedules (20261202000003 on).
    let db = schema_before(20261202000003).await;
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, queue, state, attempts, lease_owner, lease_token,
                                     lease_expires_at, started_at, payload, idempotency_key)
         values ('00000000-0000-7000-8000-0000000000a1', 'k', 'limited', 'queued', 0, null, null,
                 null, null, '{\"n\": 1.50}', 'key-a1'),
                ('00000000-0000-7000-8000-0000000000a2', 'k', 'default', 'running', 1, 'w', 41,
                 now() + interval '1 hour', now(), '{}', null);
         insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
                 max_attempts, next_run_at, created_at, finished_at, updated_at)
         values ('00000000-0000-7000-8000-0000000000a3', 'default', 'k', '{}', 'succeeded', 0, 1,
                 5, now(), now(), now(), now());
         insert into faultline.queue_settings (queue, concurrency_limit) values ('limited', 1);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    faultline::db::migrate(&db.pool).await.unwrap();
    assert!(faultline::db::schema_is_current(&db.pool).await.unwrap());

    let store = db.store();
    let id = |n: &str| -> faultline::JobId {
        format!("00000000-0000-7000-8000-0000000000{n}")
            .parse()
            .unwrap()
    };
    for (n, state) in [
        ("a1", JobState::Queued),
        ("a2", JobState::Running),
        ("a3", JobState::Succeeded),
    ] {
        let job = store.get(id(n)).await.unwrap();
        assert_eq!(job.state, state, "job {n}");
        assert_eq!(job.concurrency_key, None, "job {n}");
    }
    // The running job's lease still holds across the upgrade: it completes under its token.
    let running = store.get(id("a2")).await.unwrap();
    let lease = faultline::Lease {
        job_id: running.id,
        token: 41,
        attempt: 1,
        owner: "w".into(),
        expires_at: running.lease_expires_at.unwrap(),
    };
    store.complete(&lease).await.unwrap();
    // The limit set before the upgrade still holds, through the new limited claim.
    let limited = vec!["limited".to_owned()];
    let claimed = store
        .claim_batch(&limited, "w2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.payload.to_string(), r#"{"n":1.50}"#);
    let stats = store.queue_stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == "limited").unwrap();
    assert_eq!((q.concurrency_limit, q.key_concurrency), (Some(1), None));
    // The old idempotency key is still enforced.
    let again = store
        .enqueue(NewJob::new("other", json!({})).with_idempotency_key("key-a1"))
        .await;
    assert!(matches!(
        again,
        Err(faultline::StoreError::IdempotencyConflict { .. })
    ));
}

#[tokio::test]
async fn an_upgrade_to_results_and_dependencies_keeps_every_job_and_lease() {
    // The schema before results and dependencies (20261202000006 on).
    let db = schema_before(20261202000006).await;
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, queue, state, attempts, lease_owner, lease_token,
                                     lease_expires_at, started_at, payload, idempotency_key)
         values ('00000000-0000-7000-8000-0000000000b1', 'k', 'default', 'queued', 0, null, null,
                 null, null, '{\"n\": 1.50}', 'key-b1'),
                ('00000000-0000-7000-8000-0000000000b2', 'k', 'default', 'running', 1, 'w', 51,
                 now() + interval '1 hour', now(), '{}', null);
         insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
                 max_attempts, next_run_at, created_at, finished_at, updated_at, last_error)
         values ('00000000-0000-7000-8000-0000000000b3', 'default', 'k', '{}', 'succeeded', 0, 1,
                 5, now(), now(), now(), now(), null),
                ('00000000-0000-7000-8000-0000000000b4', 'default', 'k', '{}', 'failed', 0, 5,
                 5, now(), now(), now(), now(), 'boom'),
                ('00000000-0000-7000-8000-0000000000b5', 'default', 'k', '{}', 'cancelled', 0, 0,
                 5, now(), now(), now(), now(), null);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    faultline::db::migrate(&db.pool).await.unwrap();
    assert!(faultline::db::schema_is_current(&db.pool).await.unwrap());

    let store = db.store();
    let id = |n: &str| -> faultline::JobId {
        format!("00000000-0000-7000-8000-0000000000{n}")
            .parse()
            .unwrap()
    };
    for (n, state) in [
        ("b1", JobState::Queued),
        ("b2", JobState::Running),
        ("b3", JobState::Succeeded),
        ("b4", JobState::Failed),
        ("b5", JobState::Cancelled),
    ] {
        let job = store.get(id(n)).await.unwrap();
        assert_eq!(job.state, state, "job {n}");
        assert_eq!(
            (job.result, job.depends_on.len(), job.pending_dependencies),
            (None, 0, 0),
            "job {n}"
        );
    }
    // The running job's lease holds across the upgrade, and it completes with a result.
    let running = store.get(id("b2")).await.unwrap();
    let lease = faultline::Lease {
        job_id: running.id,
        token: 51,
        attempt: 1,
        owner: "w".into(),
        expires_at: running.lease_expires_at.unwrap(),
    };
    store
        .complete_with_result(&lease, &json!({"rows": 3}))
        .await
        .unwrap();
    let done = store.get(id("b2")).await.unwrap();
    assert_eq!(
        (done.state, done.result.map(|r| r.to_value())),
        (JobState::Succeeded, Some(json!({"rows": 3})))
    );
    // Jobs from before the upgrade can be depended on: succeeded counts as done, failed cancels.
    let after_success = store
        .enqueue(NewJob::new("k", json!({})).with_dependency(id("b3")))
        .await
        .unwrap()
        .into_job();
    assert_eq!(after_success.state, JobState::Queued);
    let after_failure = store
        .enqueue(NewJob::new("k", json!({})).with_dependency(id("b4")))
        .await
        .unwrap()
        .into_job();
    assert_eq!(after_failure.state, JobState::Cancelled);
    // A waiting job on the old queued one is promoted when it succeeds.
    let waiting = store
        .enqueue(NewJob::new("k", json!({})).with_dependency(id("b1")))
        .await
        .unwrap()
        .into_job();
    assert_eq!(waiting.state, JobState::Waiting);
    let claimed = store
        .claim_batch(&["default".into()], "w2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    let old = claimed.iter().find(|c| c.job.id == id("b1")).unwrap();
    store.complete(&old.lease).await.unwrap();
    assert_eq!(store.get(waiting.id).await.unwrap().state, JobState::Queued);
    // Old failed and cancelled jobs retry as before.
    for n in ["b4", "b5"] {
        assert_eq!(store.retry(id(n)).await.unwrap().state, JobState::Queued);
    }
}

#[tokio::test]
async fn an_upgrade_to_uniqueness_and_traces_keeps_every_job_and_lease() {
    // The schema before uniqueness scopes and trace contexts (20261203000002 on).
    let db = schema_before(20261203000002).await;
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, queue, state, attempts, lease_owner, lease_token,
                                     lease_expires_at, started_at, payload, idempotency_key)
         values ('00000000-0000-7000-8000-0000000000c1', 'k', 'lim', 'queued', 0, null, null,
                 null, null, '{\"n\": 1.50}', 'key-c1'),
                ('00000000-0000-7000-8000-0000000000c2', 'k', 'default', 'running', 1, 'w', 61,
                 now() + interval '1 hour', now(), '{}', null);
         insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
                 max_attempts, next_run_at, created_at, finished_at, updated_at, last_error)
         values ('00000000-0000-7000-8000-0000000000c3', 'default', 'k', '{}', 'succeeded', 0, 1,
                 5, now(), now(), now(), now(), null);
         insert into faultline.queue_settings (queue, concurrency_limit) values ('lim', 2);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    faultline::db::migrate(&db.pool).await.unwrap();
    assert!(faultline::db::schema_is_current(&db.pool).await.unwrap());

    let store = db.store();
    let id = |n: &str| -> faultline::JobId {
        format!("00000000-0000-7000-8000-0000000000{n}")
            .parse()
            .unwrap()
    };
    for (n, state) in [
        ("c1", JobState::Queued),
        ("c2", JobState::Running),
        ("c3", JobState::Succeeded),
    ] {
        let job = store.get(id(n)).await.unwrap();
        assert_eq!(job.state, state, "job {n}");
        assert_eq!(
            (job.unique_key, job.unique_period_ms, job.traceparent),
            (None, None, None),
            "job {n}"
        );
    }
    assert_eq!(
        store.get(id("c1")).await.unwrap().payload.to_string(),
        r#"{"n":1.50}"#
    );
    // The running job's lease holds across the upgrade.
    let running = store.get(id("c2")).await.unwrap();
    let lease = faultline::Lease {
        job_id: running.id,
        token: 61,
        attempt: 1,
        owner: "w".into(),
        expires_at: running.lease_expires_at.unwrap(),
    };
    store.complete(&lease).await.unwrap();
    // The limited queue's old job is claimed by the new claim_limited (it returns traces now).
    let claimed = store
        .claim_batch(&["lim".into()], "w2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.id, id("c1"));
    store.complete(&claimed[0].lease).await.unwrap();
    // Old jobs have no uniqueness key: a unique job with any key is created beside them.
    let unique = store
        .enqueue(NewJob::new("k", json!({})).unique_while_active())
        .await
        .unwrap();
    assert!(matches!(unique, faultline::Enqueued::Created(_)));
}

#[tokio::test]
async fn an_upgrade_to_edges_lanes_and_marks_keeps_every_job_lease_dependency_and_schedule() {
    // The schema before this wave's migrations (20261206000001 on).
    let db = schema_before(20261206000001).await;
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, queue, state, attempts, lease_owner, lease_token,
                                     lease_expires_at, started_at, payload, idempotency_key,
                                     priority, has_dependents)
         values ('00000000-0000-7000-8000-0000000000d1', 'k', 'default', 'queued', 0, null, null,
                 null, null, '{\"n\": 1.50}', 'key-d1', 0, true),
                ('00000000-0000-7000-8000-0000000000d2', 'k', 'default', 'running', 1, 'w', 71,
                 now() + interval '1 hour', now(), '{}', null, 0, false),
                ('00000000-0000-7000-8000-0000000000d4', 'k', 'hi', 'queued', 0, null, null,
                 null, null, '{}', null, -3, false);
         insert into faultline.jobs (id, kind, queue, state, depends_on, pending_dependencies)
         values ('00000000-0000-7000-8000-0000000000d3', 'k', 'default', 'waiting',
                 '{00000000-0000-7000-8000-0000000000d1}', 1);
         insert into faultline.queue_settings (queue, concurrency_limit) values ('lim', 2);
         insert into faultline.schedules (name, cron, timezone, kind, payload, queue, priority,
                 max_attempts, misfire, paused, considered_until, next_run_at)
         values ('nightly', '0 3 * * *', 'UTC', 'k', '{}', 'default', 0, 5, 'run_once', false,
                 now(), now() + interval '1 day');
         insert into faultline.scheduler_clock (singleton, ticked_at, up_since)
         values (true, now(), now() - interval '1 hour');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    faultline::db::migrate(&db.pool).await.unwrap();
    assert!(faultline::db::schema_is_current(&db.pool).await.unwrap());

    let store = db.store();
    let id = |n: &str| -> faultline::JobId {
        format!("00000000-0000-7000-8000-0000000000{n}")
            .parse()
            .unwrap()
    };
    // The live counts start from the rows the upgrade found (migration `live_counts`).
    let counts: Vec<_> = store
        .queue_stats()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.queue, q.queued, q.running, q.waiting))
        .collect();
    assert_eq!(
        counts,
        [
            ("default".to_owned(), 1, 1, 1),
            ("hi".to_owned(), 1, 0, 0),
            ("lim".to_owned(), 0, 0, 0)
        ]
    );
    // Every lane of the live jobs is known, and a mark does not hide the old rows.
    store.mark_lanes().await.unwrap();
    let lanes: i64 = sqlx::query_scalar("select count(*) from faultline.lanes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(lanes, 2);
    // The running job's lease holds across the upgrade.
    let running = store.get(id("d2")).await.unwrap();
    let lease = faultline::Lease {
        job_id: running.id,
        token: 71,
        attempt: 1,
        owner: "w".into(),
        expires_at: running.lease_expires_at.unwrap(),
    };
    store.complete(&lease).await.unwrap();
    // The old queued jobs are claimed, in priority order, and the waiting one is promoted
    // through the edge the migration made for it when its parent succeeds.
    let claimed = store
        .claim_batch(
            &["default".into(), "hi".into()],
            "w2",
            10,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, [id("d4"), id("d1")]);
    assert_eq!(claimed[1].job.payload.to_string(), r#"{"n":1.50}"#);
    for c in &claimed {
        store.complete(&c.lease).await.unwrap();
    }
    assert_eq!(store.get(id("d3")).await.unwrap().state, JobState::Queued);
    // The key (held by the old job: a new request with it conflicts), the setting and the
    // schedule are kept.
    match store
        .enqueue(NewJob::new("k", json!({"n": 2})).with_idempotency_key("key-d1"))
        .await
    {
        Err(faultline::StoreError::IdempotencyConflict { existing, .. }) => {
            assert_eq!(existing, id("d1"))
        }
        other => panic!("{other:?}"),
    }
    let schedule = store.schedule("nightly").await.unwrap();
    assert_eq!(schedule.cron, "0 3 * * *");
    let settings: Option<i32> = sqlx::query_scalar(
        "select concurrency_limit from faultline.queue_settings where queue = 'lim'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(settings, Some(2));
    // The clock row has no tenure yet: its next tick is judged by the gap, as before.
    store.fire_schedules().await.unwrap();
}

#[tokio::test]
async fn an_upgrade_to_latency_and_durable_steps_keeps_every_job_lease_and_minute() {
    // The schema before this session's migrations (20261207000001 on).
    let db = schema_before(20261207000001).await;
    sqlx::raw_sql(
        "insert into faultline.jobs (id, kind, queue, state, attempts, lease_owner, lease_token,
                                     lease_expires_at, started_at, payload, priority, has_dependents)
         values ('00000000-0000-7000-8000-0000000000e1', 'k', 'default', 'queued', 0, null, null,
                 null, null, '{\"n\": 1.50}', 0, true),
                ('00000000-0000-7000-8000-0000000000e2', 'k', 'default', 'running', 1, 'w', 81,
                 now() + interval '1 hour', now(), '{}', 0, false);
         insert into faultline.jobs (id, kind, queue, state, depends_on, pending_dependencies)
         values ('00000000-0000-7000-8000-0000000000e3', 'k', 'default', 'waiting',
                 '{00000000-0000-7000-8000-0000000000e1}', 1);
         insert into faultline.job_edges (parent, child)
         values ('00000000-0000-7000-8000-0000000000e1', '00000000-0000-7000-8000-0000000000e3');
         insert into faultline.queue_throughput (minute, queue, succeeded, failed, cancelled)
         values (date_trunc('minute', now()) - interval '5 minutes', 'default', 7, 1, 0);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    faultline::db::migrate(&db.pool).await.unwrap();
    assert!(faultline::db::schema_is_current(&db.pool).await.unwrap());

    let store = db.store();
    let id = |n: &str| -> faultline::JobId {
        format!("00000000-0000-7000-8000-0000000000{n}")
            .parse()
            .unwrap()
    };
    // The dependency-waiting job is still `waiting` (the rewritten constraint admits it), with
    // nothing parked.
    let waiting = store.get(id("e3")).await.unwrap();
    assert_eq!(
        (waiting.state, waiting.waiting_for),
        (JobState::Waiting, None)
    );
    // The running job's lease holds across the upgrade, and records a step under it.
    let running = store.get(id("e2")).await.unwrap();
    let lease = faultline::Lease {
        job_id: running.id,
        token: 81,
        attempt: 1,
        owner: "w".into(),
        expires_at: running.lease_expires_at.unwrap(),
    };
    let step = store
        .record_step(&lease, "first", &faultline::Payload::null())
        .await
        .unwrap();
    assert_eq!(step.lease_token, 81);
    store.complete(&lease).await.unwrap();
    // The old queued job runs, and its dependent is promoted when it succeeds.
    let claimed = store
        .claim_batch(&["default".into()], "w2", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [id("e1")]
    );
    store.complete(&claimed[0].lease).await.unwrap();
    assert_eq!(store.get(id("e3")).await.unwrap().state, JobState::Queued);
    // A minute counted before the upgrade keeps its counts, without latency.
    let minutes = store.throughput(60).await.unwrap();
    assert_eq!(minutes.len(), 1);
    assert_eq!((minutes[0].succeeded, minutes[0].wait_p95_ms), (7, None));
}
