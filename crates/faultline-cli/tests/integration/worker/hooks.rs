//! Execution hooks as middleware (issue 17): several hooks on one worker, in a defined order,
//! one giving every handler a task-local context; none needs a change to the handlers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use faultline::worker::{
    ExecutionHook, HandlerRegistry, HookFuture, JobContext, JobError, RunEnd, RunFuture, Worker,
};
use faultline::{JobState, NewJob};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::worker::config;
use crate::harness::{wait_for, TestDb};

tokio::task_local! {
    static TENANT: String;
}

/// Records what it is told, named; with `tenant`, runs handlers with the job's queue as TENANT.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    tenant: bool,
}

impl ExecutionHook for Recorder {
    fn started<'a>(&'a self, ctx: &'a JobContext) -> HookFuture<'a> {
        Box::pin(async move {
            let line = format!("{} started {}", self.name, ctx.kind);
            self.log.lock().unwrap().push(line);
        })
    }
    fn finished<'a>(&'a self, ctx: &'a JobContext, end: &'a RunEnd) -> HookFuture<'a> {
        Box::pin(async move {
            let line = format!("{} finished {} {end:?}", self.name, ctx.kind);
            self.log.lock().unwrap().push(line);
        })
    }
    fn wrap(&self, ctx: &JobContext, run: RunFuture) -> RunFuture {
        let (name, log) = (self.name, self.log.clone());
        let tenant = self.tenant.then(|| ctx.queue.clone());
        Box::pin(async move {
            log.lock().unwrap().push(format!("{name} enter"));
            let out = match tenant {
                Some(tenant) => TENANT.scope(tenant, run).await,
                None => run.await,
            };
            log.lock().unwrap().push(format!("{name} exit"));
            out
        })
    }
}

/// Only `finished`: the other methods keep their defaults.
struct CountFailures(Arc<Mutex<u32>>);

impl ExecutionHook for CountFailures {
    fn finished<'a>(&'a self, _ctx: &'a JobContext, end: &'a RunEnd) -> HookFuture<'a> {
        Box::pin(async move {
            if matches!(end, RunEnd::Failed(_)) {
                *self.0.lock().unwrap() += 1;
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_around_every_handler_and_give_it_context() {
    let db = TestDb::new().await;
    let store = db.store();
    let log = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(0));
    let mut registry = HandlerRegistry::new();
    registry.register_fn(
        "whoami",
        |_ctx: JobContext, _: serde_json::Value| async move {
            Ok(TENANT.try_with(|t| t.clone()).unwrap_or_default())
        },
    );
    registry.register_fn(
        "boom",
        |_ctx: JobContext, _: serde_json::Value| async move {
            Err::<(), _>(JobError::permanent("boom"))
        },
    );
    let mut cfg = config("hooks");
    cfg.queues = vec!["tenant-a".into()];
    let worker = Worker::new(store.clone(), registry, cfg)
        .unwrap()
        .with_hook(Arc::new(Recorder {
            name: "outer",
            log: log.clone(),
            tenant: false,
        }))
        .with_hook(Arc::new(Recorder {
            name: "inner",
            log: log.clone(),
            tenant: true,
        }))
        .with_hook(Arc::new(CountFailures(failures.clone())));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let who = store
        .enqueue(NewJob::new("whoami", json!({})).with_queue("tenant-a"))
        .await
        .unwrap()
        .into_job();
    let job = wait_for("whoami to succeed", Duration::from_secs(20), || async {
        let job = store.get(who.id).await.ok()?;
        (job.state == JobState::Succeeded).then_some(job)
    })
    .await;
    assert_eq!(
        job.result.map(|r| r.to_value()),
        Some(json!("tenant-a")),
        "the handler saw the hook's context"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer started whoami",
            "inner started whoami",
            "outer enter",
            "inner enter",
            "inner exit",
            "outer exit",
            "inner finished whoami Succeeded",
            "outer finished whoami Succeeded",
        ]
    );

    let boom = store
        .enqueue(NewJob::new("boom", json!({})).with_queue("tenant-a"))
        .await
        .unwrap()
        .into_job();
    wait_for("boom to fail", Duration::from_secs(20), || async {
        let job = store.get(boom.id).await.ok()?;
        (job.state == JobState::Failed).then_some(())
    })
    .await;
    assert_eq!(*failures.lock().unwrap(), 1);
    assert!(log
        .lock()
        .unwrap()
        .contains(&"outer finished boom Failed(\"boom\")".to_owned()));
    shutdown.cancel();
    running.await.unwrap();
}
