//! The HTTP API (docs/http-api.md): every route's happy path and error statuses, through `app(...)`
//! without a socket; bad input that must answer 4xx and write nothing; auth.

use axum::http::{Method, StatusCode};
use faultline::http::ApiConfig;
use serde_json::{json, Value};

use crate::harness::TestDb;

use crate::harness::http::{call, router, send_raw};

async fn job_count(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[track_caller]
fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn every_route_answers_its_happy_path_and_its_errors() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());

    let (status, _, body) = call(&api, Method::GET, "/health", None, &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _, body) = call(&api, Method::GET, "/ready", None, &[]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    // Enqueue: 201 with Location.
    let request = json!({"kind": "email", "payload": {"to": "a@b.c"}, "queue": "mail", "priority": -1, "max_attempts": 3});
    let (status, headers, job) = call(&api, Method::POST, "/v1/jobs", Some(request), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(headers["location"], format!("/v1/jobs/{id}").as_str());
    assert_eq!(job["state"], "queued");
    assert_eq!(job["queue"], "mail");
    assert_eq!(job["max_attempts"], 3);
    assert!(headers.contains_key("x-request-id"));

    // Get.
    let (status, _, got) = call(&api, Method::GET, &format!("/v1/jobs/{id}"), None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["errors"], json!([]));
    let (status, _, body) = call(
        &api,
        Method::GET,
        &format!("/v1/jobs/{}", uuid::Uuid::now_v7()),
        None,
        &[],
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _, body) = call(&api, Method::GET, "/v1/jobs/12345", None, &[]).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_id");

    // List with a cursor.
    for i in 0..3 {
        call(
            &api,
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "noop", "payload": {"i": i}})),
            &[],
        )
        .await;
    }
    let (status, _, page) = call(&api, Method::GET, "/v1/jobs?limit=2", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    // A listing is a summary: payloads, results and error histories only when asked for.
    for bulky in ["payload", "result", "errors"] {
        assert!(
            page["jobs"][0].get(bulky).is_none(),
            "{bulky} listed: {page}"
        );
    }
    let (_, _, full) = call(
        &api,
        Method::GET,
        "/v1/jobs?limit=2&fields=payload",
        None,
        &[],
    )
    .await;
    assert_eq!(full["jobs"][0]["payload"], json!({"i": 2}), "newest first");
    assert!(full["jobs"][0].get("errors").is_none(), "{full}");
    let (_, _, all) = call(&api, Method::GET, "/v1/jobs?limit=2&fields=all", None, &[]).await;
    assert_eq!(all["jobs"][1]["payload"], json!({"i": 1}));
    assert!(all["jobs"][0]["errors"].is_array(), "{all}");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, _, next) = call(
        &api,
        Method::GET,
        &format!("/v1/jobs?limit=2&cursor={cursor}"),
        None,
        &[],
    )
    .await;
    assert_eq!(next["jobs"].as_array().unwrap().len(), 2);
    assert!(next["next_cursor"].is_null());
    let (_, _, mail) = call(
        &api,
        Method::GET,
        "/v1/jobs?queue=mail&state=queued&kind=email",
        None,
        &[],
    )
    .await;
    assert_eq!(mail["jobs"].as_array().unwrap().len(), 1);

    // Cancel, then the illegal repeats.
    let (status, _, cancelled) = call(
        &api,
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, cancelled["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let (status, _, body) = call(
        &api,
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        None,
        &[],
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(body["error"]["job_id"], id.as_str());

    // Retry, then the illegal repeat.
    let (status, _, retried) = call(
        &api,
        Method::POST,
        &format!("/v1/jobs/{id}/retry"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, retried["state"].clone()),
        (StatusCode::OK, json!("queued"))
    );
    let (status, _, body) = call(
        &api,
        Method::POST,
        &format!("/v1/jobs/{id}/retry"),
        None,
        &[],
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
    let unknown = uuid::Uuid::now_v7();
    for action in ["cancel", "retry"] {
        let (status, _, body) = call(
            &api,
            Method::POST,
            &format!("/v1/jobs/{unknown}/{action}"),
            None,
            &[],
        )
        .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }

    // Queues.
    let (status, _, queues) = call(&api, Method::GET, "/v1/queues", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].clone())
        .collect();
    assert_eq!(names, [json!("default"), json!("mail")]);
    assert_eq!(queues["queues"][0]["queued"], 3);

    // Batch: created, replayed, conflict.
    let batch = json!({"jobs": [
        {"kind": "noop", "idempotency_key": "b-1"},
        {"kind": "noop", "idempotency_key": "b-1"},
        {"kind": "other", "idempotency_key": "b-1"},
        {"kind": "noop"},
    ]});
    let (status, _, body) = call(&api, Method::POST, "/v1/jobs/batch", Some(batch), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let statuses: Vec<_> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!("created"),
            json!("replayed"),
            json!("conflict"),
            json!("created")
        ]
    );
    assert_eq!(
        body["results"][2]["existing_job_id"],
        body["results"][0]["job"]["id"]
    );

    // Routing errors are JSON too.
    let (status, _, body) = call(&api, Method::GET, "/v2/nothing", None, &[]).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _, body) = call(&api, Method::DELETE, "/v1/jobs", None, &[]).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // Metrics and the OpenAPI document.
    let (status, headers, text) = call(&api, Method::GET, "/metrics", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(text
        .as_str()
        .unwrap()
        .contains("faultline_http_requests_total"));
    let (status, _, doc) = call(&api, Method::GET, "/openapi.json", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/retry",
        "/v1/queues",
        "/v1/jobs/batch",
        "/openapi.json",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Job"].is_object());
}

#[tokio::test]
async fn idempotency_key_from_header_or_body_replays_or_conflicts() {
    let db = TestDb::new().await;
    let (api, metrics) = router(&db, ApiConfig::default());
    let body = json!({"kind": "email", "payload": {"to": "x"}});
    let key = [("idempotency-key", "order-7")];
    let (status, headers, first) =
        call(&api, Method::POST, "/v1/jobs", Some(body.clone()), &key).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("idempotent-replayed"));
    // The same key in the body is the same request.
    let mut in_body = body.clone();
    in_body["idempotency_key"] = json!("order-7");
    let (status, headers, again) = call(&api, Method::POST, "/v1/jobs", Some(in_body), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["id"], first["id"]);
    // A different request under the key: 409 naming the job.
    let (status, _, conflict) = call(
        &api,
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "email", "payload": {"to": "y"}})),
        &key,
    )
    .await;
    assert_error(
        status,
        &conflict,
        StatusCode::CONFLICT,
        "idempotency_conflict",
    );
    assert_eq!(conflict["error"]["job_id"], first["id"]);
    assert!(conflict["error"]["message"]
        .as_str()
        .unwrap()
        .contains(first["id"].as_str().unwrap()));
    // Header and body disagree: 400.
    let mut both = body.clone();
    both["idempotency_key"] = json!("other");
    let (status, _, err) = call(&api, Method::POST, "/v1/jobs", Some(both), &key).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "idempotency_key_mismatch",
    );
    assert_eq!(job_count(&db).await, 1);
    assert!(metrics
        .render()
        .contains("faultline_jobs_deduplicated_total{queue=\"default\"} 1"));
}

#[tokio::test]
async fn malformed_requests_answer_4xx_naming_the_problem_and_write_nothing() {
    let db = TestDb::new().await;
    let config = ApiConfig {
        max_payload_bytes: 1024,
        ..ApiConfig::default()
    };
    let (api, _) = router(&db, config);
    let big = format!(
        r#"{{"kind":"k","payload":{{"x":"{}"}}}}"#,
        "a".repeat(200_000)
    );
    let too_many =
        serde_json::to_string(&json!({"jobs": vec![json!({"kind": "k"}); 1001]})).unwrap();
    let long_kind = format!(r#"{{"kind":"{}"}}"#, "k".repeat(256));
    let json_ct = Some("application/json");
    // (method, path, content type, body, expected status)
    type Case<'a> = (Method, &'a str, Option<&'a str>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (Method::POST, "/v1/jobs", json_ct, Some("{"), 400),
        (Method::POST, "/v1/jobs", json_ct, Some("not json"), 400),
        (Method::POST, "/v1/jobs", json_ct, Some(""), 400),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k"} trailing"#),
            400,
        ),
        (Method::POST, "/v1/jobs", json_ct, Some("[1,2]"), 422),
        (Method::POST, "/v1/jobs", json_ct, Some("null"), 422),
        (Method::POST, "/v1/jobs", json_ct, Some("{}"), 422),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":""}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":42}"#),
            422,
        ),
        (Method::POST, "/v1/jobs", json_ct, Some(&long_kind), 422),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","bogus":true}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","max_attempts":0}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","max_attempts":-5}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","max_attempts":"three"}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","priority":40000}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","run_at":"tomorrow"}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","queue":""}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","idempotency_key":""}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","timeout_ms":0}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs",
            json_ct,
            Some(r#"{"kind":"k","payload":{"x":"#),
            400,
        ),
        (Method::POST, "/v1/jobs", json_ct, Some(&big), 413),
        (
            Method::POST,
            "/v1/jobs",
            Some("text/plain"),
            Some(r#"{"kind":"k"}"#),
            415,
        ),
        (Method::POST, "/v1/jobs", None, Some(r#"{"kind":"k"}"#), 415),
        (
            Method::POST,
            "/v1/jobs/batch",
            json_ct,
            Some(r#"{"jobs":[]}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            json_ct,
            Some(&too_many),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            json_ct,
            Some(r#"{"jobs":[{"kind":"ok"},{"kind":""}]}"#),
            422,
        ),
        (
            Method::POST,
            "/v1/jobs/batch",
            json_ct,
            Some(r#"{"jobs":{"kind":"k"}}"#),
            422,
        ),
        (Method::GET, "/v1/jobs?state=sleeping", None, None, 400),
        (Method::GET, "/v1/jobs?limit=0", None, None, 400),
        (Method::GET, "/v1/jobs?limit=many", None, None, 400),
        (Method::GET, "/v1/jobs?cursor=abc", None, None, 400),
        (Method::GET, "/v1/jobs?colour=red", None, None, 400),
        (Method::GET, "/v1/jobs/not-a-uuid", None, None, 400),
        (
            Method::POST,
            "/v1/jobs/not-a-uuid/cancel",
            json_ct,
            None,
            400,
        ),
        (Method::POST, "/v1/jobs/%ZZ/retry", json_ct, None, 400),
        (Method::POST, "/v1/jobs/not-a-uuid/cancel", None, None, 415),
    ];
    assert!(cases.len() >= 25);
    for (method, path, content_type, body, expected) in cases {
        let what = format!("{method} {path} {:?}", body.map(|b| &b[..b.len().min(60)]));
        let (status, _, reply) = send_raw(&api, method, path, body, content_type, &[]).await;
        assert_eq!(status.as_u16(), expected, "{what}: {reply}");
        assert!(reply["error"]["code"].is_string(), "{what}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{what}: {reply}");
    }
    assert_eq!(job_count(&db).await, 0, "a bad request wrote something");
}

#[tokio::test]
async fn field_errors_name_the_field() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());
    for (body, field) in [
        (json!({"kind": "k", "max_attempts": 0}), "max_attempts"),
        (json!({"kind": "k", "max_attempts": "x"}), "max_attempts"),
        (json!({"kind": ""}), "kind"),
        (json!({"kind": "k", "run_at": "soon"}), "run_at"),
        (
            json!({"jobs": [{"kind": "k"}, {"kind": "k", "priority": "high"}]}),
            "jobs[1].priority",
        ),
    ] {
        let path = if body.get("jobs").is_some() {
            "/v1/jobs/batch"
        } else {
            "/v1/jobs"
        };
        let (_, _, reply) = call(&api, Method::POST, path, Some(body.clone()), &[]).await;
        assert_eq!(reply["error"]["field"], field, "{body}: {reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(field),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn a_configured_token_guards_every_route_but_health_ready_and_metrics() {
    let db = TestDb::new().await;
    let token = "s3cret-token-0123456789";
    let (api, _) = router(
        &db,
        ApiConfig {
            api_token: Some(token.into()),
            ..ApiConfig::default()
        },
    );
    let wrong_same_length = "s3cret-token-0123456788";
    assert_eq!(wrong_same_length.len(), token.len());
    let job = Some(json!({"kind": "noop"}));
    for auth in [
        None,
        Some("Bearer nope".to_owned()),
        Some(format!("Bearer {wrong_same_length}")),
        Some(format!("Basic {token}")),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        for (method, path) in [
            (Method::POST, "/v1/jobs"),
            (Method::GET, "/v1/jobs"),
            (Method::GET, "/v1/queues"),
            (Method::GET, "/openapi.json"),
        ] {
            let body = if method == Method::POST {
                job.clone()
            } else {
                None
            };
            let (status, headers, reply) = call(&api, method, path, body, &headers).await;
            assert_error(status, &reply, StatusCode::UNAUTHORIZED, "unauthorized");
            assert!(headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
    }
    for path in ["/health", "/ready", "/metrics"] {
        let (status, _, _) = call(&api, Method::GET, path, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path} must not need a token");
    }
    let bearer = format!("Bearer {token}");
    let (status, _, _) = call(
        &api,
        Method::POST,
        "/v1/jobs",
        job.clone(),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(job_count(&db).await, 1, "only the authorised request wrote");

    // Without a configured token, no header is needed.
    let (open, _) = router(&db, ApiConfig::default());
    let (status, _, _) = call(&open, Method::POST, "/v1/jobs", job, &[]).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// The dashboard's search and bulk actions over the API: `GET /v1/jobs?key=&created_after=`,
/// and `POST /v1/jobs/bulk` (a dry run counts, the action moves only the matching jobs in the
/// states it applies to).
#[tokio::test]
async fn jobs_are_found_by_key_and_time_and_a_filtered_set_is_cancelled_and_retried_in_bulk() {
    let db = TestDb::new().await;
    let (api, _) = router(&db, ApiConfig::default());
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"kind": "mail", "queue": "bulk", "payload": {"i": i}, "idempotency_key": format!("order-{i}")});
        let (status, _, job) = call(&api, Method::POST, "/v1/jobs", Some(body), &[]).await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let (_, _, other) = call(
        &api,
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "mail", "queue": "elsewhere"})),
        &[],
    )
    .await;

    let (status, _, page) = call(&api, Method::GET, "/v1/jobs?key=order-1", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["id"], ids[1].as_str());
    let (_, _, page) = call(
        &api,
        Method::GET,
        "/v1/jobs?queue=bulk&created_after=2000-01-01T00:00:00Z&created_before=2999-01-01T00:00:00%2B02:00",
        None,
        &[],
    )
    .await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3, "{page}");
    let (_, _, page) = call(
        &api,
        Method::GET,
        "/v1/jobs?created_after=2999-01-01T00:00:00Z",
        None,
        &[],
    )
    .await;
    assert_eq!(page["jobs"], json!([]));

    let filter = json!({"queue": "bulk", "kind": "mail"});
    let (status, _, counted) = call(
        &api,
        Method::POST,
        "/v1/jobs/bulk",
        Some(json!({"action": "cancel", "filter": filter, "dry_run": true})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{counted}");
    assert_eq!(
        counted,
        json!({"matched": 3, "changed": 0, "refused": [], "more": false})
    );
    let (_, _, done) = call(
        &api,
        Method::POST,
        "/v1/jobs/bulk",
        Some(json!({"action": "cancel", "filter": filter})),
        &[],
    )
    .await;
    assert_eq!(
        (done["matched"].clone(), done["changed"].clone()),
        (json!(3), json!(3))
    );
    for id in &ids {
        let (_, _, job) = call(&api, Method::GET, &format!("/v1/jobs/{id}"), None, &[]).await;
        assert_eq!(job["state"], "cancelled");
    }
    let (_, _, untouched) = call(
        &api,
        Method::GET,
        &format!("/v1/jobs/{}", other["id"].as_str().unwrap()),
        None,
        &[],
    )
    .await;
    assert_eq!(untouched["state"], "queued");
    let (_, _, done) = call(
        &api,
        Method::POST,
        "/v1/jobs/bulk",
        Some(json!({"action": "retry", "filter": {"state": "cancelled"}})),
        &[],
    )
    .await;
    assert_eq!(done["changed"], 3, "{done}");
    let (_, _, page) = call(
        &api,
        Method::GET,
        "/v1/jobs?queue=bulk&state=queued",
        None,
        &[],
    )
    .await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);
}
