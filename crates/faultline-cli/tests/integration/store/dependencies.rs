//! docs/library.md dependencies: a job waits for its parents, is queued when the last one succeeds and
//! cancelled (the dependency named) when one fails or is cancelled, in the transaction that
//! finished the parent.

use std::time::Duration;

use faultline::store::BatchItem;
use faultline::{Dependency, Job, JobId, JobState, NewJob, Store, StoreError};
use serde_json::json;

use crate::harness::{default_queue, TestDb};

const TTL: Duration = Duration::from_secs(30);

fn job() -> NewJob {
    NewJob::new("noop", json!({}))
}

async fn add(store: &Store, job: NewJob) -> Job {
    store.enqueue(job).await.unwrap().into_job()
}

/// Claim exactly `id` (the only eligible job on its queue in these tests) and complete it.
async fn run(store: &Store, id: JobId) {
    let claimed = store
        .claim_batch(&default_queue(), "w", 1000, TTL)
        .await
        .unwrap();
    let mine = claimed
        .iter()
        .find(|c| c.job.id == id)
        .unwrap_or_else(|| panic!("{id} was not claimable"));
    store.complete(&mine.lease).await.unwrap();
    for other in claimed.iter().filter(|c| c.job.id != id) {
        store.release(&other.lease).await.unwrap();
    }
}

async fn fail(store: &Store, id: JobId) {
    let claimed = store
        .claim_batch(&default_queue(), "w", 1000, TTL)
        .await
        .unwrap();
    let mine = claimed.iter().find(|c| c.job.id == id).unwrap();
    store
        .fail_attempt(&mine.lease, "boom", false)
        .await
        .unwrap();
    for other in claimed.iter().filter(|c| c.job.id != id) {
        store.release(&other.lease).await.unwrap();
    }
}

async fn state(store: &Store, id: JobId) -> JobState {
    store.get(id).await.unwrap().state
}

fn ids(items: &[BatchItem]) -> Vec<JobId> {
    items
        .iter()
        .map(|item| match item {
            BatchItem::Created(job) | BatchItem::Replayed(job) => job.id,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_child_waits_for_every_parent_and_is_queued_when_the_last_succeeds() {
    let db = TestDb::new().await;
    let store = db.store();
    let a = add(&store, job()).await;
    let b = add(&store, job()).await;
    let child = add(&store, job().with_dependency(a.id).with_dependency(b.id)).await;
    assert_eq!(child.state, JobState::Waiting);
    assert_eq!(child.pending_dependencies, 2);
    assert_eq!(child.depends_on, vec![a.id, b.id]);

    // A waiting job is never claimed.
    let claimed = store
        .claim_batch(&default_queue(), "w", 10, TTL)
        .await
        .unwrap();
    assert!(claimed.iter().all(|c| c.job.id != child.id));
    for c in &claimed {
        store.release(&c.lease).await.unwrap();
    }

    run(&store, a.id).await;
    let now = store.get(child.id).await.unwrap();
    assert_eq!(
        (now.state, now.pending_dependencies),
        (JobState::Waiting, 1)
    );
    run(&store, b.id).await;
    let now = store.get(child.id).await.unwrap();
    assert_eq!((now.state, now.pending_dependencies), (JobState::Queued, 0));
    run(&store, child.id).await;
    assert_eq!(state(&store, child.id).await, JobState::Succeeded);
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats[0].waiting, 0);
    assert_eq!(stats[0].succeeded, 3);
}

#[tokio::test]
async fn a_failure_cancels_a_whole_chain_naming_the_dependency() {
    let db = TestDb::new().await;
    let store = db.store();
    // A chain of 100 in one batch, each naming the one before it by index.
    let chain: Vec<NewJob> = (0..100)
        .map(|i| {
            if i == 0 {
                job()
            } else {
                job().with_dependency(Dependency::Earlier(i - 1))
            }
        })
        .collect();
    let items = store.enqueue_batch(chain).await.unwrap();
    let chain = ids(&items);
    assert_eq!(state(&store, chain[0]).await, JobState::Queued);
    assert_eq!(state(&store, chain[99]).await, JobState::Waiting);
    assert_eq!(store.queue_stats().await.unwrap()[0].waiting, 99);

    fail(&store, chain[0]).await;
    for (i, id) in chain.iter().enumerate().skip(1) {
        let job = store.get(*id).await.unwrap();
        assert_eq!(job.state, JobState::Cancelled, "chain[{i}]");
        let named = chain[i - 1];
        let why = job.last_error.clone().unwrap();
        assert!(why.contains(&named.to_string()), "chain[{i}]: {why}");
        let expected = if i == 1 { "failed" } else { "cancelled" };
        assert!(why.ends_with(expected), "chain[{i}]: {why}");
        assert_eq!(job.errors.last().unwrap().reason, "dependency");
    }
    let stats = &store.queue_stats().await.unwrap()[0];
    assert_eq!((stats.waiting, stats.cancelled, stats.failed), (0, 99, 1));
}

#[tokio::test]
async fn a_chain_of_100_runs_in_order() {
    let db = TestDb::new().await;
    let store = db.store();
    let chain: Vec<NewJob> = (0..100)
        .map(|i| match i {
            0 => job(),
            _ => job().with_dependency(Dependency::Earlier(i - 1)),
        })
        .collect();
    let chain = ids(&store.enqueue_batch(chain).await.unwrap());
    for (i, id) in chain.iter().enumerate() {
        // Only the head of what is left is ever eligible.
        let claimed = store
            .claim_batch(&default_queue(), "w", 10, TTL)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "step {i}");
        assert_eq!(claimed[0].job.id, *id, "step {i}");
        store.complete(&claimed[0].lease).await.unwrap();
    }
    assert_eq!(state(&store, chain[99]).await, JobState::Succeeded);
}

#[tokio::test]
async fn a_fan_in_of_1000_parents_promotes_its_child_once() {
    let db = TestDb::new().await;
    let store = db.store();
    // 1,000 parents; at most 100 dependencies per job, so through 10 joins of 100 each.
    let parents = ids(&store.enqueue_batch(vec![job(); 1000]).await.unwrap());
    let joins: Vec<NewJob> = parents
        .chunks(100)
        .map(|chunk| {
            chunk
                .iter()
                .fold(NewJob::new("noop", json!({"join": true})), |j, id| {
                    j.with_dependency(*id)
                })
        })
        .chain(std::iter::once(
            (0..10).fold(NewJob::new("noop", json!({"final": true})), |j, i| {
                j.with_dependency(Dependency::Earlier(i))
            }),
        ))
        .collect();
    let joined = ids(&store.enqueue_batch(joins).await.unwrap());
    let child = joined[10];
    assert_eq!(store.get(child).await.unwrap().pending_dependencies, 10);

    // Complete the parents in batches, as a worker does.
    let mut done = 0;
    while done < 1000 {
        let claimed = store
            .claim_batch(&default_queue(), "w", 250, TTL)
            .await
            .unwrap();
        let leases: Vec<_> = claimed.iter().map(|c| c.lease.clone()).collect();
        for result in store.complete_batch(&leases).await.unwrap() {
            result.unwrap();
        }
        done += claimed.len();
        assert!(!claimed.is_empty());
    }
    assert_eq!(done, 1000);
    assert_eq!(state(&store, child).await, JobState::Waiting);
    for id in &joined[..10] {
        assert_eq!(state(&store, *id).await, JobState::Queued);
    }
    let claimed = store
        .claim_batch(&default_queue(), "w", 50, TTL)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);
    let leases: Vec<_> = claimed.iter().map(|c| c.lease.clone()).collect();
    store.complete_batch(&leases).await.unwrap();
    let now = store.get(child).await.unwrap();
    assert_eq!((now.state, now.pending_dependencies), (JobState::Queued, 0));
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_dependents_and_theirs() {
    let db = TestDb::new().await;
    let store = db.store();
    let a = add(&store, job()).await;
    let b = add(&store, job().with_dependency(a.id)).await;
    let c = add(&store, job().with_dependency(b.id)).await;
    let unrelated = add(&store, job()).await;
    store.cancel(a.id).await.unwrap();
    let b = store.get(b.id).await.unwrap();
    assert_eq!(b.state, JobState::Cancelled);
    assert_eq!(
        b.last_error.as_deref(),
        Some(format!("dependency {} cancelled", a.id).as_str())
    );
    assert_eq!(state(&store, c.id).await, JobState::Cancelled);
    assert_eq!(state(&store, unrelated.id).await, JobState::Queued);

    // Cancelling a waiting job itself works too.
    let d = add(&store, job()).await;
    let e = add(&store, job().with_dependency(d.id)).await;
    assert_eq!(store.cancel(e.id).await.unwrap().state, JobState::Cancelled);
    assert_eq!(state(&store, d.id).await, JobState::Queued);
}

#[tokio::test]
async fn a_dependency_already_finished_settles_the_new_job_at_once() {
    let db = TestDb::new().await;
    let store = db.store();
    let done = add(&store, job()).await;
    run(&store, done.id).await;
    let queued = add(&store, job().with_dependency(done.id)).await;
    assert_eq!(queued.state, JobState::Queued);
    assert_eq!(queued.pending_dependencies, 0);

    let failed = add(&store, job()).await;
    fail(&store, failed.id).await;
    let orphan = add(&store, job().with_dependency(failed.id)).await;
    assert_eq!(orphan.state, JobState::Cancelled);
    assert_eq!(
        orphan.last_error.as_deref(),
        Some(format!("dependency {} failed", failed.id).as_str())
    );

    // Retrying the orphan is refused while its dependency is failed; after the dependency is
    // retried, the orphan waits for it again, and runs once it succeeds.
    match store.retry(orphan.id).await {
        Err(StoreError::DependencyFailed { dependency, .. }) => assert_eq!(dependency, failed.id),
        other => panic!("{other:?}"),
    }
    store.retry(failed.id).await.unwrap();
    let again = store.retry(orphan.id).await.unwrap();
    assert_eq!(
        (again.state, again.pending_dependencies),
        (JobState::Waiting, 1)
    );
    run(&store, failed.id).await;
    assert_eq!(state(&store, orphan.id).await, JobState::Queued);
}

#[tokio::test]
async fn unknown_and_malformed_dependencies_are_refused_and_nothing_is_written() {
    let db = TestDb::new().await;
    let store = db.store();
    let unknown = JobId::new();
    match store.enqueue(job().with_dependency(unknown)).await {
        Err(StoreError::Invalid { field, message }) => {
            assert_eq!(field, "depends_on[0]");
            assert!(message.contains(&unknown.to_string()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match store
        .enqueue(job().with_dependency(Dependency::Earlier(0)))
        .await
    {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "depends_on[0]"),
        other => panic!("{other:?}"),
    }
    let batch = vec![job(), job().with_dependency(Dependency::Earlier(1))];
    match store.enqueue_batch(batch).await {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "jobs[1].depends_on[0]"),
        other => panic!("{other:?}"),
    }
    let too_many = (0..101).fold(job(), |j, _| j.with_dependency(JobId::new()));
    match store.enqueue(too_many).await {
        Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "depends_on"),
        other => panic!("{other:?}"),
    }
    // A batch whose last job names an unknown id writes none of its jobs.
    let batch = vec![job(), job().with_dependency(Dependency::Earlier(0)), {
        job().with_dependency(unknown)
    }];
    assert!(store.enqueue_batch(batch).await.is_err());
    let count: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn the_database_refuses_waiting_to_running() {
    let db = TestDb::new().await;
    let store = db.store();
    let a = add(&store, job()).await;
    let child = add(&store, job().with_dependency(a.id)).await;
    let refused = sqlx::query(
        "update faultline.jobs set state = 'running', lease_owner = 'x', lease_token = 1,
                lease_expires_at = now() + interval '1 minute', pending_dependencies = 0
         where id = $1",
    )
    .bind(child.id)
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("illegal job state transition"),
        "{refused}"
    );
    assert_eq!(state(&store, child.id).await, JobState::Waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_parents_finishing_at_once_promote_their_child_exactly_once() {
    let db = TestDb::new().await;
    let store = db.store();
    for round in 0..30 {
        let a = add(&store, job()).await;
        let b = add(&store, job()).await;
        let child = add(&store, job().with_dependency(a.id).with_dependency(b.id)).await;
        let claimed = store
            .claim_batch(&default_queue(), "w", 10, TTL)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "round {round}");
        let (s1, s2) = (store.clone(), store.clone());
        let (l1, l2) = (claimed[0].lease.clone(), claimed[1].lease.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { s1.complete(&l1).await }),
            tokio::spawn(async move { s2.complete(&l2).await }),
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();
        let now = store.get(child.id).await.unwrap();
        assert_eq!(
            (now.state, now.pending_dependencies),
            (JobState::Queued, 0),
            "round {round}"
        );
        run(&store, child.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_enqueued_while_its_parent_finishes_is_never_left_waiting() {
    let db = TestDb::new().await;
    let store = db.store();
    for round in 0..40 {
        let parent = add(&store, job()).await;
        let claimed = store
            .claim_batch(&default_queue(), "w", 10, TTL)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "round {round}");
        let lease = claimed[0].lease.clone();
        let (s1, s2) = (store.clone(), store.clone());
        let (done, child) = tokio::join!(
            tokio::spawn(async move { s1.complete(&lease).await }),
            tokio::spawn(async move {
                s2.enqueue(job().with_dependency(parent.id))
                    .await
                    .map(|e| e.into_job().id)
            }),
        );
        done.unwrap().unwrap();
        let child = child.unwrap().unwrap();
        let now = store.get(child).await.unwrap();
        assert_eq!(
            (now.state, now.pending_dependencies),
            (JobState::Queued, 0),
            "round {round}: the child of a succeeded parent must be queued"
        );
        run(&store, child).await;
    }
}

#[tokio::test]
async fn a_replayed_batch_with_dependencies_returns_the_same_jobs() {
    let db = TestDb::new().await;
    let store = db.store();
    let batch = || {
        vec![
            job().with_idempotency_key("parent"),
            job()
                .with_idempotency_key("child")
                .with_dependency(Dependency::Earlier(0)),
        ]
    };
    let first = ids(&store.enqueue_batch(batch()).await.unwrap());
    let again = store.enqueue_batch(batch()).await.unwrap();
    assert!(matches!(again[0], BatchItem::Replayed(_)));
    assert!(matches!(again[1], BatchItem::Replayed(_)), "{:?}", again[1]);
    assert_eq!(ids(&again), first);
    let child = store.get(first[1]).await.unwrap();
    assert_eq!(child.depends_on, vec![first[0]]);
}

/// The settle trigger runs once per statement over every job the statement finished: parents
/// completed together in one batch report count once each, a child of two of them included.
#[tokio::test]
async fn parents_completed_in_one_batch_settle_their_children_together() {
    let db = TestDb::new().await;
    let store = db.store();
    let parents = ids(&store.enqueue_batch(vec![job(); 3]).await.unwrap());
    let both = add(
        &store,
        job()
            .with_dependency(parents[0])
            .with_dependency(parents[1]),
    )
    .await;
    let one = add(&store, job().with_dependency(parents[2])).await;
    let also_waits = add(
        &store,
        job().with_dependency(parents[0]).with_dependency(one.id),
    )
    .await;
    let claimed = store
        .claim_batch(&default_queue(), "w", 10, TTL)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3, "only the parents are eligible");
    let leases: Vec<_> = claimed.iter().map(|c| c.lease.clone()).collect();
    for result in store.complete_batch(&leases).await.unwrap() {
        result.unwrap();
    }
    for (id, expect, pending) in [
        (both.id, JobState::Queued, 0),
        (one.id, JobState::Queued, 0),
        (also_waits.id, JobState::Waiting, 1),
    ] {
        let job = store.get(id).await.unwrap();
        assert_eq!((job.state, job.pending_dependencies), (expect, pending));
    }
}
