//! Typed jobs and the test helpers (issue 17): a `JobArgs` type is enqueued without spelling its
//! kind, runs through a typed handler (inline with `faultline::testing`, and in a real worker),
//! and a payload that is not the type fails for good naming the type.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faultline::testing::{self, RunResult};
use faultline::worker::{HandlerRegistry, JobContext, JobError};
use faultline::{Enqueued, JobArgs, JobOptions, JobState, NewJob, UniqueScope};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::harness::worker::{config, Running};
use crate::harness::{wait_for, TestDb};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SendEmail {
    to: String,
    subject: String,
}

impl JobArgs for SendEmail {
    const KIND: &'static str = "email.send";
    fn options() -> JobOptions {
        JobOptions {
            queue: Some("mail".into()),
            max_attempts: Some(3),
            timeout: Some(Duration::from_secs(20)),
            ..JobOptions::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Refresh {
    account: i64,
}

impl JobArgs for Refresh {
    const KIND: &'static str = "account.refresh";
    fn options() -> JobOptions {
        JobOptions {
            unique: Some(UniqueScope::Active),
            ..JobOptions::default()
        }
    }
}

fn email(to: &str) -> SendEmail {
    SendEmail {
        to: to.into(),
        subject: "hello".into(),
    }
}

fn email_registry() -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    registry.register_job_fn(|ctx: JobContext, mail: SendEmail| async move {
        Ok(json!({"sent_to": mail.to, "attempt": ctx.attempt}))
    });
    registry
}

#[tokio::test]
async fn a_typed_job_is_enqueued_with_its_kind_and_options_and_runs_inline() {
    let db = TestDb::new().await;
    let store = db.store();
    let job = store
        .enqueue(email("a@example.com"))
        .await
        .unwrap()
        .into_job();
    assert_eq!(job.kind, "email.send");
    assert_eq!(job.queue, "mail");
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.timeout_ms, Some(20_000));
    assert_eq!(
        job.payload,
        json!({"to": "a@example.com", "subject": "hello"})
    );
    // Options stay overridable on the NewJob.
    let urgent = NewJob::from_args(&email("b@example.com"))
        .unwrap()
        .with_priority(-5)
        .with_queue("urgent");
    let urgent = store.enqueue(urgent).await.unwrap().into_job();
    assert_eq!((urgent.priority, urgent.queue.as_str()), (-5, "urgent"));

    let registry = email_registry();
    assert_eq!(registry.kinds(), ["email.send"]);
    let report = testing::drain(&store, &registry, &["mail"]).await.unwrap();
    assert_eq!(
        report.runs,
        vec![(
            job.id,
            RunResult::Succeeded(json!({"sent_to": "a@example.com", "attempt": 1}))
        )]
    );
    let done = store.get(job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.lease_owner.as_deref(), Some(testing::TEST_WORKER));
    // The other queue was not touched.
    assert_eq!(store.get(urgent.id).await.unwrap().state, JobState::Queued);
}

#[tokio::test]
async fn a_payload_that_is_not_the_type_fails_for_good_naming_the_type() {
    let db = TestDb::new().await;
    let store = db.store();
    let bad = store
        .enqueue(NewJob::new("email.send", json!({"to": 5})).with_queue("mail"))
        .await
        .unwrap()
        .into_job();
    let report = testing::drain(&store, &email_registry(), &["mail"])
        .await
        .unwrap();
    assert_eq!(report.failed(), 1, "{report:?}");
    let job = store.get(bad.id).await.unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1, "permanent: no retry");
    let error = job.last_error.unwrap();
    assert!(error.contains("SendEmail"), "{error}");
    assert!(error.contains("\"email.send\""), "{error}");
    assert!(error.contains("invalid type"), "{error}");
}

#[tokio::test]
async fn enqueued_jobs_are_seen_inside_the_transaction_and_only_after_commit_outside() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut tx = db.pool.begin().await.unwrap();
    store
        .enqueue_in(&mut tx, email("c@example.com"))
        .await
        .unwrap();
    let (job, args) = testing::assert_enqueued(&mut *tx, |m: &SendEmail| m.to == "c@example.com")
        .await
        .unwrap();
    assert_eq!(args, email("c@example.com"));
    assert!(testing::enqueued::<SendEmail, _>(&db.pool)
        .await
        .unwrap()
        .is_empty());
    tx.commit().await.unwrap();
    let seen = testing::enqueued::<SendEmail, _>(&db.pool).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.id, job.id);
    // A mismatch panics with what was enqueued.
    let missing = tokio::spawn({
        let pool = db.pool.clone();
        async move {
            let _ = testing::assert_enqueued(&pool, |m: &SendEmail| m.to == "nobody").await;
        }
    })
    .await
    .unwrap_err();
    let message = missing.into_panic();
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("c@example.com"), "{message}");
}

#[tokio::test]
async fn make_due_runs_a_retry_now_instead_of_after_its_backoff() {
    let db = TestDb::new().await;
    // The default backoff (seconds), not the suite's fast one: the retry must still be waiting
    // when make_due runs, however slow the machine is.
    let store = faultline::Store::new(db.pool.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = HandlerRegistry::new();
    registry.register_job_fn({
        let calls = calls.clone();
        move |_ctx, _mail: SendEmail| {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(JobError::retryable("smtp timeout"));
                }
                Ok(())
            }
        }
    });
    let job = store
        .enqueue(email("d@example.com"))
        .await
        .unwrap()
        .into_job();
    let first = testing::drain(&store, &registry, &["mail"]).await.unwrap();
    assert_eq!(first.retrying(), 1, "the retry waits for its backoff");
    assert_eq!(testing::make_due(&store, &["mail"]).await.unwrap(), 1);
    let second = testing::drain(&store, &registry, &["mail"]).await.unwrap();
    assert_eq!(second.succeeded(), 1);
    let job = store.get(job.id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 2));
}

#[tokio::test]
async fn a_type_unique_while_active_dedupes_by_its_arguments() {
    let db = TestDb::new().await;
    let store = db.store();
    let first = store.enqueue(Refresh { account: 1 }).await.unwrap();
    assert!(matches!(first, Enqueued::Created(_)));
    let again = store.enqueue(Refresh { account: 1 }).await.unwrap();
    assert!(again.was_duplicate());
    assert_eq!(again.job().id, first.job().id);
    let other = store.enqueue(Refresh { account: 2 }).await.unwrap();
    assert!(matches!(other, Enqueued::Created(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_typed_handlers_beside_string_keyed_ones() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = email_registry();
    registry.register_fn("plain", |_ctx: JobContext, n: i64| async move { Ok(n * 2) });
    let mut cfg = config("typed");
    cfg.queues = vec!["mail".into(), "default".into()];
    let worker = Running::start(&store, registry, cfg);
    let typed = store
        .enqueue(email("e@example.com"))
        .await
        .unwrap()
        .into_job();
    let plain = store
        .enqueue(NewJob::new("plain", json!(21)))
        .await
        .unwrap()
        .into_job();
    for id in [typed.id, plain.id] {
        wait_for("the job to succeed", Duration::from_secs(20), || async {
            let job = store.get(id).await.ok()?;
            (job.state == JobState::Succeeded).then_some(())
        })
        .await;
    }
    assert_eq!(
        store
            .get(typed.id)
            .await
            .unwrap()
            .result
            .map(|r| r.to_value()),
        Some(json!({"sent_to": "e@example.com", "attempt": 1}))
    );
    assert_eq!(
        store
            .get(plain.id)
            .await
            .unwrap()
            .result
            .map(|r| r.to_value()),
        Some(json!(42))
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_queues_serves_its_typed_handlers_queues_and_default() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = email_registry();
    registry.register_fn("noop", |_ctx: JobContext, _: faultline::Payload| async {
        Ok(())
    });
    assert_eq!(
        registry.typed_queues(),
        vec![("mail".to_owned(), vec!["email.send".to_owned()])]
    );
    let mail = store
        .enqueue(email("a@example.com"))
        .await
        .unwrap()
        .into_job();
    assert_eq!(mail.queue, "mail");
    let plain = store
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .into_job();
    // `config` names no queues.
    let worker = Running::start(&store, registry, config("typed-queues"));
    for id in [mail.id, plain.id] {
        crate::harness::worker::wait_for_state(
            &store,
            id,
            JobState::Succeeded,
            Duration::from_secs(10),
        )
        .await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn run_job_runs_exactly_that_job_and_drain_kind_only_its_kind() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = email_registry();
    registry.register_job_fn(|_ctx: JobContext, _: Refresh| async { Ok(()) });
    let mut mails = Vec::new();
    for to in ["a@example.com", "b@example.com", "c@example.com"] {
        mails.push(store.enqueue(email(to)).await.unwrap().into_job().id);
    }
    let refresh = store
        .enqueue(Refresh { account: 7 })
        .await
        .unwrap()
        .into_job()
        .id;

    // The last mail, not the first eligible one.
    let ran = testing::run_job(&store, &registry, mails[2]).await.unwrap();
    assert!(matches!(ran, RunResult::Succeeded(_)), "{ran:?}");
    assert_eq!(store.get(mails[0]).await.unwrap().state, JobState::Queued);
    // A finished job cannot be run again.
    match testing::run_job(&store, &registry, mails[2]).await {
        Err(faultline::StoreError::InvalidTransition { state, action, .. }) => {
            assert_eq!((state, action), (JobState::Succeeded, "run"))
        }
        other => panic!("expected InvalidTransition, got {other:?}"),
    }

    // Every other mail, and nothing else.
    let report = testing::drain_kind::<SendEmail>(&store, &registry)
        .await
        .unwrap();
    let ran: Vec<_> = report.runs.iter().map(|(id, _)| *id).collect();
    assert_eq!(ran, mails[..2].to_vec());
    assert_eq!(report.succeeded(), 2);
    assert_eq!(store.get(refresh).await.unwrap().state, JobState::Queued);
}

/// Written with the derive instead of an `impl JobArgs`.
#[derive(Debug, Serialize, Deserialize, faultline::JobArgs)]
#[job(
    kind = "report.build",
    queue = "reports",
    max_attempts = 4,
    priority = -2,
    timeout = "1m 30s",
    unique = "active"
)]
struct BuildReport {
    month: String,
}

#[tokio::test]
async fn a_derived_job_type_carries_its_attributes() {
    assert_eq!(<BuildReport as JobArgs>::KIND, "report.build");
    assert_eq!(
        <BuildReport as JobArgs>::options(),
        JobOptions {
            queue: Some("reports".into()),
            priority: Some(-2),
            max_attempts: Some(4),
            timeout: Some(Duration::from_secs(90)),
            unique: Some(UniqueScope::Active),
        }
    );
    let db = TestDb::new().await;
    let store = db.store();
    let report = || BuildReport {
        month: "2026-11".into(),
    };
    let job = store.enqueue(report()).await.unwrap().into_job();
    assert_eq!(
        (job.queue.as_str(), job.priority, job.max_attempts),
        ("reports", -2, 4)
    );
    assert_eq!(job.timeout_ms, Some(90_000));
    // Unique while live: the same arguments again are a duplicate.
    assert!(store.enqueue(report()).await.unwrap().was_duplicate());
}
