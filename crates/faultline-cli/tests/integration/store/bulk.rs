//! Searching and acting on a filtered set: the listing's key and time-range filters, and
//! `Store::bulk` (a dry run counts; cancel and retry move exactly the matching jobs in the
//! states they apply to; a job that moved on its own meanwhile is skipped, never overwritten).

use std::time::Duration;

use chrono::Utc;
use faultline::store::BulkAction;
use faultline::{JobFilter, JobState, NewJob};
use serde_json::json;

use crate::harness::TestDb;

#[tokio::test]
async fn the_listing_finds_a_job_by_key_and_by_creation_time() {
    let db = TestDb::new().await;
    let store = db.store();
    let keyed = store
        .enqueue(NewJob::new("k", json!({})).with_idempotency_key("order-42"))
        .await
        .unwrap()
        .into_job();
    store.enqueue(NewJob::new("k", json!({}))).await.unwrap();
    let by_key = JobFilter {
        idempotency_key: Some("order-42".into()),
        ..JobFilter::default()
    };
    let found = store.list(&by_key, None, 10).await.unwrap();
    assert_eq!(
        found.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [keyed.id]
    );

    let all = store.list(&JobFilter::default(), None, 10).await.unwrap();
    assert_eq!(all.jobs.len(), 2);
    // A range that holds the keyed job's creation and not the later one's.
    let second = all.jobs[0].created_at;
    let window = JobFilter {
        created_after: Some(keyed.created_at),
        created_before: Some(second),
        ..JobFilter::default()
    };
    let found = store.list(&window, None, 10).await.unwrap();
    if second > keyed.created_at {
        assert_eq!(
            found.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
            [keyed.id]
        );
    }
    let future = JobFilter {
        created_after: Some(Utc::now() + chrono::Duration::hours(1)),
        ..JobFilter::default()
    };
    assert!(store.list(&future, None, 10).await.unwrap().jobs.is_empty());
}

#[tokio::test]
async fn a_bulk_action_moves_exactly_the_matching_jobs_it_applies_to() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut bulk_ids = Vec::new();
    for i in 0..3 {
        let job = NewJob::new("mail", json!({ "i": i })).with_queue("bulk");
        bulk_ids.push(store.enqueue(job).await.unwrap().into_job().id);
    }
    // Another kind on the same queue, and the same kind on another queue: not matched.
    let other_kind = store
        .enqueue(NewJob::new("sms", json!({})).with_queue("bulk"))
        .await
        .unwrap()
        .into_job()
        .id;
    let other_queue = store
        .enqueue(NewJob::new("mail", json!({})).with_queue("elsewhere"))
        .await
        .unwrap()
        .into_job()
        .id;
    let filter = JobFilter {
        queue: Some("bulk".into()),
        kind: Some("mail".into()),
        ..JobFilter::default()
    };

    // A dry run counts and moves nothing; retry applies to none of them (all queued).
    let counted = store.bulk(BulkAction::Cancel, &filter, true).await.unwrap();
    assert_eq!(
        (counted.matched, counted.changed, counted.more),
        (3, 0, false)
    );
    let none = store.bulk(BulkAction::Retry, &filter, true).await.unwrap();
    assert_eq!(none.matched, 0);
    for id in &bulk_ids {
        assert_eq!(store.get(*id).await.unwrap().state, JobState::Queued);
    }

    // One of them is running: cancel takes it too (its holder learns at its next heartbeat).
    let running = store
        .claim_batch(&["bulk".to_owned()], "w", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .expect("a job of the bulk queue");
    assert!(bulk_ids.contains(&running.job.id));
    let cancelled = store
        .bulk(BulkAction::Cancel, &filter, false)
        .await
        .unwrap();
    assert_eq!((cancelled.matched, cancelled.changed), (3, 3));
    assert!(cancelled.refused.is_empty());
    for id in &bulk_ids {
        assert_eq!(store.get(*id).await.unwrap().state, JobState::Cancelled);
    }
    for id in [other_kind, other_queue] {
        assert_eq!(store.get(id).await.unwrap().state, JobState::Queued);
    }
    // The cancelled holder's report is refused: nothing overwrites the cancel.
    assert!(store.complete(&running.lease).await.is_err());

    // Retry them all: back to queued with a fresh budget.
    let retried = store.bulk(BulkAction::Retry, &filter, false).await.unwrap();
    assert_eq!((retried.matched, retried.changed), (3, 3));
    for id in &bulk_ids {
        let job = store.get(*id).await.unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    }
}
