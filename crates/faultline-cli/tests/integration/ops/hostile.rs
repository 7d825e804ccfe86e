//! Hostile inputs that are not requests: webhook receivers that answer with NUL bytes, with huge
//! or stalling bodies, proxies in the environment, handler errors Postgres cannot store, reports
//! the database refuses for good, payloads that must come back exactly as sent, and stored rows
//! that an earlier release could have left odd. None may wedge a job, change a payload, or make
//! a read fail.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use faultline::http::ApiConfig;
use faultline::worker::{
    builtin_registry, HandlerRegistry, JobContext, JobError, WebhookConfig, WorkerConfig,
};
use faultline::{Backoff, Jitter, JobId, JobState, NewJob, Store, StoreConfig, StoreError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::worker::{config, enqueue, wait_for_state, Running};
use crate::harness::TestDb;

/// A receiver that misbehaves on purpose, written on raw TCP so every byte is ours:
/// - `/nul500`, `/nul404`: an error answer whose body holds NUL and invalid UTF-8;
/// - `/huge`: a 500 that announces 1.5 GB and streams until the client stops reading;
/// - `/slow`: a 500 that sends ten bytes of its body, then stalls.
struct Receiver {
    base: String,
    huge_bytes_sent: Arc<AtomicU64>,
}

async fn hostile_receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let huge_bytes_sent = Arc::new(AtomicU64::new(0));
    let sent = huge_bytes_sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body: &[u8] = b"bad\0body \xff\xfe and \0 more";
                match path.as_str() {
                    "/nul500" | "/nul404" => {
                        let status = if path == "/nul500" {
                            "500 Oops"
                        } else {
                            "404 Nope"
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body).await;
                    }
                    "/huge" => {
                        let head = "HTTP/1.1 500 Oops\r\ncontent-length: 1500000000\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        let chunk = vec![b'x'; 64 * 1024];
                        while socket.write_all(&chunk).await.is_ok() {
                            if sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) > 2_000_000_000
                            {
                                break;
                            }
                        }
                    }
                    _ => {
                        let head = "HTTP/1.1 500 Oops\r\ncontent-length: 1000\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(b"0123456789").await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
    });
    Receiver {
        base,
        huge_bytes_sent,
    }
}

/// A proxy that only counts who connects to it (and answers nothing useful).
async fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (url, connections)
}

fn private_webhooks() -> HandlerRegistry {
    builtin_registry(WebhookConfig {
        allow_private: true,
        ..WebhookConfig::default()
    })
    .unwrap()
}

fn quick(id: &str) -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        ..config(id)
    }
}

#[tokio::test]
async fn webhook_answers_with_nul_bytes_are_recorded_sanitised_and_never_wedge_a_job() {
    let db = TestDb::new().await;
    let store = db.store();
    let receiver = hostile_receiver().await;
    let worker = Running::start(&store, private_webhooks(), quick("nul"));
    let retried = enqueue(
        &store,
        NewJob::new(
            "webhook",
            json!({"url": format!("{}/nul500", receiver.base)}),
        )
        .with_max_attempts(2),
    )
    .await;
    let refused = enqueue(
        &store,
        NewJob::new(
            "webhook",
            json!({"url": format!("{}/nul404", receiver.base)}),
        ),
    )
    .await;
    for (id, status, attempts) in [(retried, "500", 2), (refused, "404", 1)] {
        let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(20)).await;
        let error = job.last_error.unwrap();
        assert!(
            error.starts_with(&format!("webhook answered {status}")),
            "{error}"
        );
        assert!(error.contains("bad\u{FFFD}body"), "{error:?}");
        assert!(!error.contains('\0'));
        assert_eq!(job.attempts, attempts);
        assert_eq!(job.errors.len(), attempts as usize);
    }
    // Cancelling still works, and nothing looped on a refused report.
    assert!(worker.count("faultline_db_errors_total") < 1.0);
    worker.stop().await;
}

#[tokio::test]
async fn a_huge_or_stalling_webhook_answer_is_read_only_as_far_as_it_is_kept() {
    let db = TestDb::new().await;
    let store = db.store();
    let receiver = hostile_receiver().await;
    let worker = Running::start(&store, private_webhooks(), quick("huge"));
    let started = Instant::now();
    let huge = enqueue(
        &store,
        NewJob::new("webhook", json!({"url": format!("{}/huge", receiver.base)}))
            .with_max_attempts(1),
    )
    .await;
    let job = wait_for_state(&store, huge, JobState::Failed, Duration::from_secs(20)).await;
    let error = job.last_error.unwrap();
    assert!(error.starts_with("webhook answered 500"), "{error}");
    // A few socket buffers' worth went out, not 1.5 GB: the worker stopped reading.
    let sent = receiver.huge_bytes_sent.load(Ordering::Relaxed);
    assert!(sent < 64 * 1024 * 1024, "the receiver sent {sent} bytes");

    let slow = enqueue(
        &store,
        NewJob::new(
            "webhook",
            json!({"url": format!("{}/slow", receiver.base), "timeout_ms": 500}),
        )
        .with_max_attempts(1),
    )
    .await;
    let job = wait_for_state(&store, slow, JobState::Failed, Duration::from_secs(20)).await;
    let error = job.last_error.unwrap();
    assert!(error.starts_with("webhook answered 500"), "{error}");
    assert!(
        error.contains("0123456789"),
        "what arrived is kept: {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    worker.stop().await;
}

#[tokio::test]
async fn invalid_webhook_headers_fail_the_job_at_once_naming_the_header() {
    let db = TestDb::new().await;
    let store = db.store();
    let worker = Running::start(&store, private_webhooks(), quick("headers"));
    for (headers, expected) in [
        (
            json!({"bad name": "x"}),
            "invalid webhook header name \"bad name\"",
        ),
        (
            json!({"X-Ok": "line\nbreak"}),
            "invalid value for webhook header \"X-Ok\"",
        ),
        (
            json!({"X-Nul": "a\u{0}b"}),
            "invalid value for webhook header \"X-Nul\"",
        ),
    ] {
        let id = enqueue(
            &store,
            NewJob::new(
                "webhook",
                json!({"url": "http://127.0.0.1:9/", "headers": headers}),
            ),
        )
        .await;
        let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(20)).await;
        assert_eq!(job.attempts, 1, "a bad header is permanent, not retried");
        assert!(
            job.last_error.as_deref().unwrap().contains(expected),
            "{job:?}"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn proxy_variables_in_the_environment_cannot_carry_webhooks_past_the_address_guard() {
    let db = TestDb::new().await;
    let store = db.store();
    let (proxy, connections) = counting_proxy().await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["worker", "--lease-ttl", "3s", "--poll-interval", "100ms"])
        .env("DATABASE_URL", &db.url)
        .env("HTTP_PROXY", &proxy)
        .env("HTTPS_PROXY", &proxy)
        .env("ALL_PROXY", &proxy)
        .env("http_proxy", &proxy)
        .env("https_proxy", &proxy)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    for url in [
        "http://localhost:8000/admin",
        "http://127.0.0.1:8000/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "https://localhost/",
    ] {
        ids.push(
            enqueue(
                &store,
                NewJob::new("webhook", json!({ "url": url })).with_max_attempts(1),
            )
            .await,
        );
    }
    for id in ids {
        let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(30)).await;
        assert!(job.last_error.is_some(), "{job:?}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a webhook went to the proxy from the environment"
    );
    drop(child);
}

#[tokio::test]
async fn an_explicit_webhook_proxy_still_gets_no_request_for_an_internal_name() {
    let db = TestDb::new().await;
    let store = db.store();
    let (proxy, connections) = counting_proxy().await;
    let registry = builtin_registry(WebhookConfig {
        proxy: Some(proxy),
        ..WebhookConfig::default()
    })
    .unwrap();
    let worker = Running::start(&store, registry, quick("proxied"));
    let id = enqueue(
        &store,
        NewJob::new("webhook", json!({"url": "http://localhost:1234/hook"})),
    )
    .await;
    let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(20)).await;
    assert_eq!(job.attempts, 1);
    assert!(job.last_error.unwrap().contains("refused"));
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    worker.stop().await;
    assert!(builtin_registry(WebhookConfig {
        proxy: Some("ftp://x".into()),
        ..WebhookConfig::default()
    })
    .is_err());
}

#[tokio::test]
async fn handler_errors_postgres_cannot_store_are_recorded_sanitised() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_fn("nul", |_: JobContext, _: serde_json::Value| async {
        Err::<(), _>(JobError::permanent(format!(
            "bad\0text {}",
            "x".repeat(100_000)
        )))
    });
    let worker = Running::start(&store, registry, quick("nul-errors"));
    let id = enqueue(&store, NewJob::new("nul", json!({}))).await;
    let job = wait_for_state(&store, id, JobState::Failed, Duration::from_secs(20)).await;
    let error = job.last_error.unwrap();
    assert!(error.starts_with("bad\u{FFFD}text"), "{error:.40}");
    assert!(error.len() <= 4096, "bounded: {} bytes", error.len());
    worker.stop().await;
}

/// A trigger standing for any permanent refusal by the database (a constraint, a value it
/// cannot store, an application's own trigger).
async fn refuse_some_reports(db: &TestDb) {
    sqlx::raw_sql(
        "create function faultline.refuse_reports() returns trigger language plpgsql as $$
         begin
           if new.kind = 'refuse-success' and new.state = 'succeeded' then
             raise exception 'no success for this kind' using errcode = '23514';
           end if;
           if new.kind = 'refuse-error' and new.last_error = 'poison' then
             raise exception 'poisoned error text' using errcode = '22P05';
           end if;
           if new.kind = 'refuse-always' and new.last_error like '%poison%' then
             raise exception 'poisoned error text' using errcode = '22P05';
           end if;
           return new;
         end $$;
         create trigger refuse_reports before update on faultline.jobs
           for each row execute function faultline.refuse_reports();
         create trigger refuse_reports before insert on faultline.job_history
           for each row execute function faultline.refuse_reports();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_report_the_database_refuses_for_good_lands_as_a_failed_attempt_not_a_loop() {
    let db = TestDb::new().await;
    refuse_some_reports(&db).await;
    let store = db.store();
    let mut registry = HandlerRegistry::new();
    registry.register_fn(
        "refuse-success",
        |_: JobContext, _: serde_json::Value| async { Ok(()) },
    );
    for kind in ["refuse-error", "refuse-always"] {
        registry.register_fn(kind, |_: JobContext, _: serde_json::Value| async {
            Err::<(), _>(JobError::retryable("poison"))
        });
    }
    let worker = Running::start(&store, registry, quick("refused"));
    let success = enqueue(
        &store,
        NewJob::new("refuse-success", json!({})).with_max_attempts(2),
    )
    .await;
    let error = enqueue(
        &store,
        NewJob::new("refuse-error", json!({})).with_max_attempts(1),
    )
    .await;
    let job = wait_for_state(&store, success, JobState::Failed, Duration::from_secs(30)).await;
    assert_eq!(job.attempts, 2, "bounded by the attempt budget");
    assert!(job
        .last_error
        .unwrap()
        .contains("the database refused to record this attempt's success (SQLSTATE 23514)"),);
    let job = wait_for_state(&store, error, JobState::Failed, Duration::from_secs(30)).await;
    let text = job.last_error.unwrap();
    assert!(
        text.starts_with("the database refused to record the handler's error (SQLSTATE 22P05)"),
        "{text}"
    );
    assert!(text.contains("poison"), "{text}");
    // Refused even in our own words: the report is dropped, heartbeats stop, the lease expires
    // and the reaper ends the attempt. Bounded, never a loop.
    let always = enqueue(
        &store,
        NewJob::new("refuse-always", json!({})).with_max_attempts(1),
    )
    .await;
    let job = wait_for_state(&store, always, JobState::Failed, Duration::from_secs(30)).await;
    assert_eq!(job.errors.len(), 1);
    assert_eq!(job.errors[0].reason, "lease_expired");
    // One refusal per report, not a retry loop.
    let refusals = worker.count("faultline_db_errors_total");
    assert!((1.0..=8.0).contains(&refusals), "{refusals} refused calls");
    worker.stop().await;
}

#[tokio::test]
async fn payloads_come_back_exactly_as_sent_over_http_the_store_and_to_the_handler() {
    let db = TestDb::new().await;
    let (router, _) = crate::harness::http::router(&db, ApiConfig::default());
    // Numbers digit for digit (serde_json writes an exponent as `e+N`: `1e+2` stays `1e+2`),
    // keys in their order, `\u0000` kept.
    let payload = r#"{"n":12345678901234567890123,"f":0.1000000000000000055511151231257827,"e":1e+2,"neg":-0.0,"z":"\u0000","order":{"b":1,"a":2,"b2":[3.140,1.5e-7]},"big":1e+400}"#;
    let body = format!(r#"{{"kind":"exact","payload":{payload}}}"#);
    let (status, _, created) = crate::harness::http::send_text(
        &router,
        Method::POST,
        "/v1/jobs",
        Some(&body),
        Some("application/json"),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = crate::harness::http::field_text(&created, "id")
        .trim_matches('"')
        .to_owned();
    let (_, _, fetched) = crate::harness::http::send_text(
        &router,
        Method::GET,
        &format!("/v1/jobs/{id}"),
        None,
        None,
        &[],
    )
    .await;
    for job in [&created, &fetched] {
        assert_eq!(crate::harness::http::field_text(job, "payload"), payload);
    }
    let (status, _, null_job) = crate::harness::http::send_raw(
        &router,
        Method::POST,
        "/v1/jobs",
        Some(r#"{"kind":"exact","payload":null}"#),
        Some("application/json"),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    assert!(null_job["payload"].is_null(), "{null_job}");

    // The handler sees the same text.
    let store = db.store();
    let seen: Arc<std::sync::Mutex<Vec<(JobId, String)>>> = Arc::default();
    let mut registry = HandlerRegistry::new();
    let recorder = seen.clone();
    registry.register_fn(
        "exact",
        move |ctx: JobContext, payload: faultline::Payload| {
            let recorder = recorder.clone();
            async move {
                recorder
                    .lock()
                    .unwrap()
                    .push((ctx.job_id, payload.to_string()));
                Ok(())
            }
        },
    );
    let worker = Running::start(&store, registry, quick("exact"));
    let id: JobId = id.parse().unwrap();
    wait_for_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
    worker.stop().await;
    let seen = seen.lock().unwrap();
    let text = &seen.iter().find(|(job, _)| *job == id).unwrap().1;
    assert_eq!(text, payload);
}

#[tokio::test]
async fn one_odd_stored_row_never_makes_a_get_or_a_list_fail() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = enqueue(&store, NewJob::new("noop", json!({}))).await;
    // What an earlier release could leave: an error entry whose times no reader can parse.
    sqlx::query(
        r#"update faultline.jobs set errors = '[{"attempt": 1, "worker": "w", "at": "garbage",
             "error": "e", "reason": "error", "retry_at": "292277-12-31T23:59:59+00:00"},
           {"attempt": "two", "error": 5}]'::jsonb
           where id = $1"#,
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let job = store.get(id).await.unwrap();
    assert_eq!(job.errors.len(), 2, "{job:?}");
    assert_eq!(job.errors[0].retry_at, None);
    assert_eq!(job.errors[1].error, "5");
    let page = store
        .list(&faultline::JobFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 1);
}

#[tokio::test]
async fn out_of_range_times_and_durations_are_refused_or_bounded_in_the_rust_api() {
    let db = TestDb::new().await;
    // A library caller's absurd backoff is bounded, not stored as an unreadable time.
    let store = Store::with_config(
        db.pool.clone(),
        StoreConfig {
            backoff: Backoff {
                base: Duration::from_secs(290_000 * 365 * 24 * 3600),
                cap: Duration::from_secs(290_000 * 365 * 24 * 3600),
                jitter: Jitter::None,
            },
            ..StoreConfig::default()
        },
    );
    let id = enqueue(&store, NewJob::new("noop", json!({}))).await;
    let claimed = store
        .claim_batch(
            &["default".into()],
            "w",
            1,
            Duration::from_secs(300_000 * 365 * 24 * 3600),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    store
        .fail_attempt(&claimed[0].lease, "boom", true)
        .await
        .unwrap();
    let job = store.get(id).await.unwrap();
    assert!(
        job.next_run_at
            .format("%Y")
            .to_string()
            .parse::<i32>()
            .unwrap()
            < 2200
    );
    store
        .list(&faultline::JobFilter::default(), None, 10)
        .await
        .unwrap();

    let ancient = chrono::DateTime::parse_from_rfc3339("-5000-01-01T00:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::DateTime::<chrono::Utc>::MIN_UTC);
    for (job, field) in [
        (
            NewJob::new("noop", json!({})).with_run_at(ancient),
            "run_at",
        ),
        (
            NewJob::new("noop", json!({})).with_run_at(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            "run_at",
        ),
        (
            NewJob::new("noop", json!({})).with_queue(" padded "),
            "queue",
        ),
        (NewJob::new("noop", json!({})).with_queue("a,b"), "queue"),
        (NewJob::new("a\0b", json!({})), "kind"),
        (
            NewJob::new("noop", json!({})).with_idempotency_key("k\0"),
            "idempotency_key",
        ),
    ] {
        match store.enqueue(job).await {
            Err(StoreError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected Invalid({field}), got {other:?}"),
        }
    }
    let mut bad = WorkerConfig {
        queues: vec!["a b".into()],
        ..WorkerConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().setting, "queues");
    bad.queues = vec!["ok".into()];
    bad.lease_ttl = Duration::from_secs(300_000 * 365 * 24 * 3600);
    assert_eq!(bad.validate().unwrap_err().setting, "lease_ttl");
}
