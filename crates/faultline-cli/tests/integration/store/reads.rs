//! Reads: get, the newest-first keyset listing, and per-queue statistics.

use std::collections::HashSet;
use std::time::Duration;

use faultline::{JobFilter, JobState, NewJob, StoreError};
use serde_json::json;

use crate::harness::{default_queue, TestDb};

#[tokio::test]
async fn list_pages_newest_first_with_filters_and_a_stable_cursor() {
    let db = TestDb::new().await;
    let store = db.store();
    for i in 0..25 {
        let queue = if i % 5 == 0 { "rare" } else { "default" };
        store
            .enqueue(NewJob::new("k", json!({ "i": i })).with_queue(queue))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(&JobFilter::default(), cursor, 10).await.unwrap();
        seen.extend(
            page.jobs
                .iter()
                .map(|j| j.payload.to_value()["i"].as_i64().unwrap()),
        );
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..25).rev().collect::<Vec<_>>(),
        "newest first, each once"
    );

    let rare = store
        .list(
            &JobFilter {
                queue: Some("rare".into()),
                ..JobFilter::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(rare.jobs.len(), 5);
    assert!(rare.next_cursor.is_none());

    store
        .claim_batch(&default_queue(), "w", 3, Duration::from_secs(60))
        .await
        .unwrap();
    let running = store
        .list(
            &JobFilter {
                state: Some(JobState::Running),
                kind: Some("k".into()),
                ..JobFilter::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(running.jobs.len(), 3);
    let ids: HashSet<_> = running.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), 3);

    for limit in [0, 1001] {
        assert!(matches!(
            store.list(&JobFilter::default(), None, limit).await,
            Err(StoreError::Invalid { ref field, .. }) if field == "limit"
        ));
    }
}

#[tokio::test]
async fn queue_stats_count_by_state_and_age_the_oldest_eligible_job() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs = (0..4).map(|i| NewJob::new("k", json!(i))).collect();
    store.enqueue_batch(jobs).await.unwrap();
    store
        .enqueue(
            NewJob::new("k", json!("later"))
                .with_queue("scheduled")
                .with_run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    // Make the oldest eligible job a minute old.
    sqlx::query(
        "update faultline.jobs set created_at = created_at - interval '60 seconds',
                next_run_at = next_run_at - interval '60 seconds'
         where payload::jsonb = '0'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let claimed = store
        .claim_batch(&default_queue(), "w", 2, Duration::from_secs(60))
        .await
        .unwrap();
    store.complete(&claimed[0].lease).await.unwrap();

    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 2);
    let default = &stats[0];
    assert_eq!(default.queue, "default");
    assert_eq!(
        (
            default.queued,
            default.running,
            default.succeeded,
            default.failed
        ),
        (2, 1, 1, 0)
    );
    // The minute-old job was claimed first (earliest next_run_at); the rest are fresh.
    assert!(default.oldest_eligible_age_seconds < 30.0);
    let scheduled = &stats[1];
    assert_eq!(scheduled.queued, 1);
    assert_eq!(
        scheduled.oldest_eligible_age_seconds, 0.0,
        "not yet eligible"
    );
}

/// The dashboard's throughput: each finished minute of the last hour is counted once, from
/// history, per queue and outcome; the minutes still open are not counted yet.
#[tokio::test]
async fn throughput_counts_each_finished_minute_once() {
    let db = TestDb::new().await;
    let store = db.store();
    sqlx::raw_sql(
        "insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
                 max_attempts, next_run_at, created_at, finished_at, updated_at)
         select gen_random_uuid(), q, 'k', '{}', s, 0, 1, 5, now(), now(),
                date_trunc('minute', now()) - make_interval(mins => m) + interval '10 seconds',
                now()
         from (values ('a', 'succeeded', 5, 3), ('a', 'failed', 5, 1), ('b', 'succeeded', 7, 2),
                      ('a', 'succeeded', 0, 4), ('a', 'cancelled', 90, 1)) v(q, s, m, n),
              generate_series(1, n)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(store.sample_throughput().await.unwrap() >= 58);
    assert_eq!(
        store.sample_throughput().await.unwrap(),
        0,
        "a minute is counted once"
    );
    let samples = store.throughput(60).await.unwrap();
    let got: Vec<(String, i64, i64, i64)> = samples
        .iter()
        .map(|s| (s.queue.clone(), s.succeeded, s.failed, s.cancelled))
        .collect();
    // Minute 7 (b), minute 5 (a); the current minute is open and minute 90 is beyond an hour.
    assert_eq!(
        got,
        vec![("b".to_owned(), 2, 0, 0), ("a".to_owned(), 3, 1, 0)]
    );
    assert!(samples[0].minute < samples[1].minute);
}

/// Latency beside throughput: of the jobs that succeeded in a minute, the median and 95th
/// percentile of how long their last attempt waited once due (`next_run_at`, or creation when
/// later) and how long it ran; failed jobs are left out of both.
#[tokio::test]
async fn throughput_keeps_each_minutes_wait_and_run_percentiles() {
    let db = TestDb::new().await;
    let store = db.store();
    // Minute 3 ago: ten successes waiting 10, 20, …, 100 ms and running 1, 2, …, 10 s; one
    // failure that waited an hour (not counted in the latency).
    sqlx::raw_sql(
        "insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
                 max_attempts, next_run_at, created_at, started_at, finished_at, updated_at)
         select gen_random_uuid(), 'lat', 'k', '{}', s, 0, 1, 5,
                t - make_interval(secs => run + wait / 1000.0),
                t - interval '2 hours',
                t - make_interval(secs => run),
                t, now()
         from (select date_trunc('minute', now()) - interval '3 minutes' + interval '30 seconds' as t) m,
              (select 'succeeded' as s, i * 10 as wait, i as run from generate_series(1, 10) i
               union all select 'failed', 3600000, 1) v",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    store.sample_throughput().await.unwrap();
    let samples = store.throughput(60).await.unwrap();
    let lat: Vec<_> = samples.iter().filter(|s| s.queue == "lat").collect();
    assert_eq!(lat.len(), 1, "{samples:?}");
    let m = lat[0];
    assert_eq!((m.succeeded, m.failed), (10, 1));
    let close = |got: Option<f64>, want: f64| {
        let got = got.expect("a percentile");
        assert!((got - want).abs() < 0.01, "got {got}, want {want}");
    };
    close(m.wait_p50_ms, 55.0);
    close(m.wait_p95_ms, 95.5);
    close(m.run_p50_ms, 5500.0);
    close(m.run_p95_ms, 9550.0);
}

// The depth sampler's first pass decides from the planner's row count whether it may count the
// live table at once (BENCHMARKS.md, issue 12: a count of 10M live jobs is a second of both
// cores). A small table is counted at once and keeps the configured interval; the estimate it
// reads follows `analyze`.
#[tokio::test]
async fn the_depth_sampler_counts_a_small_live_table_at_once_from_the_planners_estimate() {
    use faultline::maintenance::{DepthSampler, DepthSamplerConfig, Service};
    use faultline::metrics::Metrics;
    use std::sync::Arc;

    let db = TestDb::new().await;
    let store = db.store();
    let jobs = (0..2000)
        .map(|i| NewJob::new("k", json!({ "i": i })))
        .collect();
    store.enqueue_batch(jobs).await.unwrap();
    sqlx::query("analyze faultline.jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.live_rows_estimate().await.unwrap(), 2000);

    let metrics = Arc::new(Metrics::new());
    let config = DepthSamplerConfig::default();
    let sampler = DepthSampler::new(store.clone(), config.clone(), metrics.clone());
    <DepthSampler as Service>::run_once(&sampler).await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("faultline_queue_depth{queue=\"default\",state=\"queued\"} 2000"),
        "{text}"
    );
    // A quick sample keeps the configured interval.
    assert_eq!(
        <DepthSampler as Service>::interval(&sampler),
        config.interval
    );
}
