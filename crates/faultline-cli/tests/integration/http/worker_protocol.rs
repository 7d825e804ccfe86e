//! The HTTP worker protocol (docs/http-api.md): a worker in any language claims over HTTP and
//! reports under the claim's lease token, with every guarantee a Rust worker has — a stale
//! token changes nothing and is answered 409 `lease_lost`, a cancelled job is told at the next
//! heartbeat, release hands the attempt back, queue settings hold for its claims, a waiting
//! claim is woken by a new job, and the worker is listed while it keeps calling.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::Router;
use faultline::http::ApiConfig;
use serde_json::{json, Value};

use crate::harness::http::{call, field_text, router, send_text};
use crate::harness::{wait_for, TestDb};

async fn post(api: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, value) = call(api, Method::POST, uri, Some(body), &[]).await;
    (status, value)
}

async fn enqueue(api: &Router, queue: &str, payload: Value) -> String {
    let (status, job) = post(
        api,
        "/v1/jobs",
        json!({"kind": "remote", "queue": queue, "payload": payload, "max_attempts": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

async fn claim(api: &Router, worker: &str, queue: &str, extra: Value) -> Vec<Value> {
    let mut body = json!({"worker_id": worker, "queues": [queue]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, answer) = post(api, "/v1/claims", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["jobs"].as_array().unwrap().clone()
}

async fn get(api: &Router, id: &str) -> Value {
    call(api, Method::GET, &format!("/v1/jobs/{id}"), None, &[])
        .await
        .2
}

#[track_caller]
fn assert_lease_lost(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "lease_lost", "{body}");
}

#[tokio::test]
async fn a_remote_worker_claims_heartbeats_and_completes_under_its_lease() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());
    let id = enqueue(&api, "py", json!({"to": "a@example.com"})).await;

    let jobs = claim(
        &api,
        "py-1",
        "py",
        json!({"max": 10, "lease_ttl_ms": 20000}),
    )
    .await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        (job["id"].as_str(), job["state"].as_str()),
        (Some(id.as_str()), Some("running"))
    );
    assert_eq!(job["lease_owner"], "py-1");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["payload"], json!({"to": "a@example.com"}));
    let token = job["lease_token"].as_i64().unwrap();
    let expires = job["lease_expires_at"].as_str().unwrap().to_owned();

    // Listed among the workers while it calls.
    let (_, _, workers) = call(&api, Method::GET, "/v1/workers", None, &[]).await;
    let listed = workers["workers"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|w| w["id"] == "py-1" && w["queues"] == json!(["py"])),
        "{workers}"
    );

    let (status, beat) = post(
        &api,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_token": token, "lease_ttl_ms": 60000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_eq!(beat["cancel_requested"], false);
    assert!(
        beat["lease_expires_at"].as_str().unwrap() > expires.as_str(),
        "{beat}"
    );

    // The result comes back byte for byte.
    let result = r#"{"z":1,"a":12345678901234567890123,"s":"\u00e9"}"#;
    let body = format!(r#"{{"lease_token": {token}, "result": {result}}}"#);
    let (status, _, text) = send_text(
        &api,
        Method::POST,
        &format!("/v1/jobs/{id}/complete"),
        Some(&body),
        Some("application/json"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(field_text(&text, "result"), result);
    assert_eq!(get(&api, &id).await["state"], "succeeded");

    // The same token again: refused, nothing changed.
    for (route, body) in [
        ("complete", json!({"lease_token": token})),
        ("heartbeat", json!({"lease_token": token})),
        ("fail", json!({"lease_token": token, "error": "late"})),
        ("release", json!({"lease_token": token})),
    ] {
        let (status, body) = post(&api, &format!("/v1/jobs/{id}/{route}"), body).await;
        assert_lease_lost(status, &body);
    }
    let after = get(&api, &id).await;
    assert_eq!(
        (
            after["state"].as_str(),
            after["errors"].as_array().map(Vec::len)
        ),
        (Some("succeeded"), Some(0))
    );

    // An unknown job: 404.
    let (status, body) = post(
        &api,
        &format!("/v1/jobs/{}/complete", uuid::Uuid::now_v7()),
        json!({"lease_token": token}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn fail_retries_after_the_given_delay_or_fails_for_good_and_release_hands_the_attempt_back() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());
    let id = enqueue(&api, "py", json!({})).await;

    // A retryable failure with its own delay: queued, due no sooner than asked.
    let token = claim(&api, "py-1", "py", json!({})).await[0]["lease_token"]
        .as_i64()
        .unwrap();
    let (status, job) = post(
        &api,
        &format!("/v1/jobs/{id}/fail"),
        json!({"lease_token": token, "error": "SMTP 451", "retry_after_ms": 3_600_000}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(1))
    );
    let due: chrono::DateTime<chrono::Utc> = job["next_run_at"].as_str().unwrap().parse().unwrap();
    assert!(
        due > chrono::Utc::now() + chrono::Duration::minutes(59),
        "{job}"
    );
    assert_eq!(get(&api, &id).await["errors"][0]["error"], "SMTP 451");
    assert!(
        claim(&api, "py-1", "py", json!({})).await.is_empty(),
        "not due yet"
    );

    // Release: back to queued at once, the attempt not spent.
    let other = enqueue(&api, "py2", json!({})).await;
    let token = claim(&api, "py-1", "py2", json!({})).await[0]["lease_token"]
        .as_i64()
        .unwrap();
    let (status, job) = post(
        &api,
        &format!("/v1/jobs/{other}/release"),
        json!({"lease_token": token}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );

    // A permanent failure: failed at once, attempts left or not.
    let again = claim(&api, "py-1", "py2", json!({})).await;
    assert_eq!(
        again[0]["attempts"], 1,
        "the released attempt was handed back"
    );
    let token = again[0]["lease_token"].as_i64().unwrap();
    let (status, job) = post(
        &api,
        &format!("/v1/jobs/{other}/fail"),
        json!({"lease_token": token, "error": "bad address", "retryable": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], "failed");
}

#[tokio::test]
async fn a_cancelled_job_is_told_at_its_heartbeat_and_a_stale_holder_cannot_overwrite_the_new_one()
{
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());

    // Cancelled while running: the heartbeat says so, the late result is refused.
    let id = enqueue(&api, "py", json!({})).await;
    let token = claim(&api, "py-1", "py", json!({})).await[0]["lease_token"]
        .as_i64()
        .unwrap();
    let (status, _) = post(&api, &format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, beat) = post(
        &api,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_token": token}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_eq!(beat["cancel_requested"], true);
    let (status, body) = post(
        &api,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": token}),
    )
    .await;
    assert_lease_lost(status, &body);
    assert_eq!(get(&api, &id).await["state"], "cancelled");

    let store = db.store();
    // A lease that lapsed: the next claim takes the job with a larger token; the old holder's
    // result is refused and the new holder's stands.
    let id = enqueue(&api, "py", json!({})).await;
    let first = claim(&api, "py-stalled", "py", json!({"lease_ttl_ms": 1000})).await;
    let old = first[0]["lease_token"].as_i64().unwrap();
    let second = wait_for(
        "the lease to lapse and the job to be claimed again",
        Duration::from_secs(30),
        || {
            let (api, store) = (api.clone(), store.clone());
            async move {
                // What the maintainer's reaper does (`serve` runs one).
                store.reap_expired(100).await.unwrap();
                let jobs = claim(&api, "py-2", "py", json!({})).await;
                jobs.into_iter().next()
            }
        },
    )
    .await;
    assert_eq!(second["id"], id.as_str());
    let new = second["lease_token"].as_i64().unwrap();
    assert!(new > old);
    let (status, body) = post(
        &api,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": old, "result": "stale"}),
    )
    .await;
    assert_lease_lost(status, &body);
    let (status, job) = post(
        &api,
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": new, "result": "fresh"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(
        (job["result"].as_str(), job["lease_owner"].as_str()),
        (Some("fresh"), Some("py-2"))
    );
}

#[tokio::test]
async fn a_waiting_claim_is_woken_by_a_new_job_and_queue_settings_hold() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());

    // Nothing there: an empty answer once the wait is over.
    let started = Instant::now();
    assert!(claim(&api, "py-1", "idle", json!({"wait_ms": 300}))
        .await
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A claim waiting up to a minute returns the job enqueued while it waits.
    let waiting = tokio::spawn({
        let api = api.clone();
        async move { claim(&api, "py-1", "later", json!({"wait_ms": 60000})).await }
    });
    let id = enqueue(&api, "later", json!({})).await;
    let jobs = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting claim to be woken")
        .unwrap();
    assert_eq!(jobs[0]["id"], id.as_str());

    // A paused queue gives nothing; a concurrency limit of 2 gives two of five.
    for _ in 0..5 {
        enqueue(&api, "limited", json!({})).await;
    }
    let (status, _) = post(&api, "/v1/queues/limited/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(claim(&api, "py-1", "limited", json!({"max": 5}))
        .await
        .is_empty());
    let (status, _, body) = call(
        &api,
        Method::PATCH,
        "/v1/queues/limited",
        Some(json!({"paused": false, "concurrency_limit": 2})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claim(&api, "py-1", "limited", json!({"max": 5}))
            .await
            .len(),
        2
    );
    assert!(claim(&api, "py-2", "limited", json!({"max": 5}))
        .await
        .is_empty());
}

/// Completions batched: one statement, each fenced by its own token — a stale token (or an
/// unknown job) changes nothing for its job, and the others land.
#[tokio::test]
async fn a_batch_of_completions_lands_each_under_its_own_token() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());
    let a = enqueue(&api, "py", json!({})).await;
    let b = enqueue(&api, "py", json!({})).await;
    let jobs = claim(&api, "py-1", "py", json!({"max": 2})).await;
    let token = |id: &str| {
        jobs.iter().find(|j| j["id"] == id).unwrap()["lease_token"]
            .as_i64()
            .unwrap()
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    let (status, answer) = post(
        &api,
        "/v1/jobs/complete",
        json!({"jobs": [
            {"id": a, "lease_token": token(&a), "result": {"n": 1}},
            {"id": b, "lease_token": token(&b) + 1000},
            {"id": unknown, "lease_token": 1},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let outcomes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["completed", "lease_lost", "lease_lost"],
        "{answer}"
    );
    assert_eq!(get(&api, &a).await["result"], json!({"n": 1}));
    assert_eq!(
        get(&api, &b).await["state"],
        "running",
        "the stale token changed nothing"
    );
    let (status, body) = post(&api, "/v1/jobs/complete", json!({"jobs": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// Heartbeats batched: one statement, each lease fenced by its own token — extended, or told
/// it was cancelled, or lost.
#[tokio::test]
async fn a_batch_of_heartbeats_extends_each_lease_under_its_own_token() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());
    let a = enqueue(&api, "py", json!({})).await;
    let b = enqueue(&api, "py", json!({})).await;
    let c = enqueue(&api, "py", json!({})).await;
    let jobs = claim(&api, "py-1", "py", json!({"max": 3, "lease_ttl_ms": 5000})).await;
    let token = |id: &str| {
        jobs.iter().find(|j| j["id"] == id).unwrap()["lease_token"]
            .as_i64()
            .unwrap()
    };
    let (status, _) = post(&api, &format!("/v1/jobs/{b}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = post(
        &api,
        "/v1/jobs/heartbeat",
        json!({"lease_ttl_ms": 60000, "jobs": [
            {"id": a, "lease_token": token(&a)},
            {"id": b, "lease_token": token(&b)},
            {"id": c, "lease_token": token(&c) + 1000},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let outcomes: Vec<&str> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["extended", "cancelled", "lease_lost"],
        "{answer}"
    );
    let extended: chrono::DateTime<chrono::Utc> = answer["results"][0]["lease_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(extended > chrono::Utc::now() + chrono::Duration::seconds(50));
    assert_eq!(
        get(&api, &c).await["state"],
        "running",
        "the stale token changed nothing"
    );
    // The worker is listed holding what its batch renewed.
    let (_, _, workers) = call(&api, Method::GET, "/v1/workers", None, &[]).await;
    let listed = workers["workers"].as_array().unwrap();
    let py = listed
        .iter()
        .find(|w| w["id"] == "py-1")
        .expect("py-1 listed");
    assert_eq!(py["inflight"], 1, "{workers}");
}
