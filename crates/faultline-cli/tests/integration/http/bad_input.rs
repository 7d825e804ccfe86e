//! The bad-input corpus: every field of every route, and every flag, with the edge values of its
//! type and of Postgres (NUL, lone surrogates, invalid UTF-8, the smallest and largest dates,
//! overflowing numbers and durations, huge and deeply nested bodies, empty strings, whitespace,
//! commas). Each must answer a 4xx with the JSON error body naming what is wrong — never a 5xx,
//! never a panic — and write nothing.
//!
//! One place, so that a new route or flag adds its rows here: `http_cases` for the API,
//! `flag_cases` for the binary.

use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use faultline::http::ApiConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::harness::http::router;
use crate::harness::TestDb;

/// What a case must answer.
#[derive(Clone, Debug)]
enum Expect {
    /// This status.
    Status(u16),
    /// 422 naming this field.
    Field(&'static str),
}

struct Case {
    method: Method,
    uri: String,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    expect: Expect,
}

fn post(uri: &str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        method: Method::POST,
        uri: uri.to_owned(),
        body: Some(body.into()),
        content_type: Some("application/json"),
        headers: Vec::new(),
        expect,
    }
}

fn get(uri: &str, expect: Expect) -> Case {
    Case {
        method: Method::GET,
        uri: uri.to_owned(),
        body: None,
        content_type: None,
        headers: Vec::new(),
        expect,
    }
}

/// An enqueue body: `{"kind": "noop", <field>: <raw JSON value>}`.
fn job_with(field: &str, raw: &str) -> Vec<u8> {
    format!(r#"{{"kind": "noop", "{field}": {raw}}}"#).into_bytes()
}

fn batch_of(raw_jobs: &[&str]) -> Vec<u8> {
    format!(r#"{{"jobs": [{}]}}"#, raw_jobs.join(",")).into_bytes()
}

const LONG: usize = 256;

/// Edge values of a name field (queue, kind): each must be refused with 422 naming the field.
fn bad_names() -> Vec<String> {
    let long = format!("\"{}\"", "x".repeat(LONG));
    [
        r#""""#,
        r#"" ""#,
        r#"" padded ""#,
        r#""a,b""#,
        r#""a b""#,
        r#""tab\t""#,
        r#""nul\u0000""#,
        r#""new\nline""#,
        r#""é""#,
        "12",
        "null",
        "[]",
        "{}",
        "true",
        &long,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn http_cases() -> Vec<Case> {
    use Expect::*;
    let mut cases = Vec::new();

    // POST /v1/jobs: every field.
    for raw in bad_names() {
        cases.push(post(
            "/v1/jobs",
            format!(r#"{{"kind": {raw}}}"#),
            Field("kind"),
        ));
        // null is "not given" for the optional queue.
        if raw != "null" {
            cases.push(post("/v1/jobs", job_with("queue", &raw), Field("queue")));
        }
    }
    // concurrency_key: a free-text label of 1–255 bytes.
    let long_key = format!("\"{}\"", "k".repeat(LONG));
    for raw in [
        r#""""#,
        r#""   ""#,
        r#""nul\u0000""#,
        r#""new\nline""#,
        "5",
        "true",
        "[]",
        "{}",
        long_key.as_str(),
    ] {
        cases.push(post(
            "/v1/jobs",
            job_with("concurrency_key", raw),
            Field("concurrency_key"),
        ));
        cases.push(post(
            "/v1/jobs/batch",
            batch_of(&[&format!(r#"{{"kind": "noop", "concurrency_key": {raw}}}"#)]),
            Field("jobs[0].concurrency_key"),
        ));
    }
    // depends_on: up to 100 job ids; in a batch also indexes of earlier entries.
    let unknown = format!("[\"{}\"]", uuid::Uuid::now_v7());
    let too_many = format!(
        "[{}]",
        (0..101)
            .map(|_| format!("\"{}\"", uuid::Uuid::now_v7()))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (raw, field) in [
        (r#""0193a5b6-0000-7000-8000-000000000000""#, "depends_on"),
        ("{}", "depends_on"),
        ("7", "depends_on"),
        (r#"["nope"]"#, "depends_on[0]"),
        (r#"["nul\u0000"]"#, "depends_on[0]"),
        ("[-1]", "depends_on[0]"),
        ("[1.5]", "depends_on[0]"),
        ("[1e400]", "depends_on[0]"),
        ("[null]", "depends_on[0]"),
        ("[true]", "depends_on[0]"),
        ("[[]]", "depends_on[0]"),
        ("[0]", "depends_on[0]"),
        (unknown.as_str(), "depends_on[0]"),
        (too_many.as_str(), "depends_on"),
    ] {
        cases.push(post("/v1/jobs", job_with("depends_on", raw), Field(field)));
    }
    for (jobs, field) in [
        (
            vec![r#"{"kind": "noop", "depends_on": [0]}"#],
            "jobs[0].depends_on[0]",
        ),
        (
            vec![
                r#"{"kind": "noop"}"#,
                r#"{"kind": "noop", "depends_on": [0, 2]}"#,
            ],
            "jobs[1].depends_on[1]",
        ),
        (
            vec![
                r#"{"kind": "noop"}"#,
                r#"{"kind": "noop", "depends_on": [18446744073709551616]}"#,
            ],
            "jobs[1].depends_on[0]",
        ),
        (
            vec![
                r#"{"kind": "noop"}"#,
                r#"{"kind": "noop", "depends_on": [-1]}"#,
            ],
            "jobs[1].depends_on[0]",
        ),
    ] {
        cases.push(post("/v1/jobs/batch", batch_of(&jobs), Field(field)));
    }
    // Uniqueness (issue 17): unique_key a label; unique_scope active|period; a period of
    // 1 ms to 366 days, only with scope period.
    let long_key = format!(r#""unique_key": "{}""#, "k".repeat(256));
    for (raw_fields, field) in [
        (long_key.as_str(), "unique_key"),
        (r#""unique_key": "two\nlines""#, "unique_key"),
        (r#""unique_scope": """#, "unique_scope"),
        (
            r#""unique_scope": "period", "unique_period_ms": null"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": 9223372036854775808"#,
            "unique_period_ms",
        ),
        (r#""unique_key": """#, "unique_key"),
        (r#""unique_key": "  ""#, "unique_key"),
        (r#""unique_key": "nul\u0000""#, "unique_key"),
        (r#""unique_key": 5"#, "unique_key"),
        (r#""unique_key": {}"#, "unique_key"),
        (r#""unique_scope": "forever""#, "unique_scope"),
        (r#""unique_scope": 1"#, "unique_scope"),
        (r#""unique_scope": "ACTIVE""#, "unique_scope"),
        (r#""unique_scope": "period""#, "unique_period_ms"),
        (r#""unique_period_ms": 1000"#, "unique_period_ms"),
        (
            r#""unique_scope": "active", "unique_period_ms": 1000"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": 0"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": -5"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": 31622400001"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": 1e30"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": 1.5"#,
            "unique_period_ms",
        ),
        (
            r#""unique_scope": "period", "unique_period_ms": "60000""#,
            "unique_period_ms",
        ),
    ] {
        let body = format!(r#"{{"kind": "noop", {raw_fields}}}"#);
        cases.push(post("/v1/jobs", body.clone(), Field(field)));
        cases.push(post(
            "/v1/jobs/batch",
            batch_of(&[&body]),
            Field(Box::leak(format!("jobs[0].{field}").into_boxed_str())),
        ));
    }
    // The dashboard's reads.
    for query in [
        "minutes=0",
        "minutes=1441",
        "minutes=abc",
        "minutes=-1",
        "minutes=",
        "other=1",
    ] {
        cases.push(get(&format!("/v1/throughput?{query}"), Status(400)));
    }
    cases.push(get("/v1/jobs/not-a-uuid/dependents", Status(400)));
    // An unknown id in the last job of a batch: nothing of the batch is written.
    let late_unknown = format!(
        r#"{{"kind": "noop", "depends_on": [0, {}]}}"#,
        &unknown[1..unknown.len() - 1]
    );
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[r#"{"kind": "noop"}"#, &late_unknown]),
        Field("jobs[1].depends_on[1]"),
    ));
    for raw in ["40000", "-40000", "1.5", "\"1\"", "1e400", "null", "[]"] {
        // null is "not given" for optional fields: only the type errors are bad.
        if raw != "null" {
            cases.push(post(
                "/v1/jobs",
                job_with("priority", raw),
                Field("priority"),
            ));
        }
    }
    for raw in [
        "0",
        "-1",
        "2147483648",
        "1e10",
        "\"5\"",
        "99999999999999999999999",
    ] {
        cases.push(post(
            "/v1/jobs",
            job_with("max_attempts", raw),
            Field("max_attempts"),
        ));
    }
    for raw in ["0", "-1", "2147483648", "\"x\"", "1.5"] {
        cases.push(post(
            "/v1/jobs",
            job_with("timeout_ms", raw),
            Field("timeout_ms"),
        ));
    }
    for raw in [
        r#""-5000-01-01T00:00:00Z""#,
        r#""-4714-11-24T00:00:00Z""#,
        r#""0000-12-31T23:59:59Z""#,
        r#""+10000-01-01T00:00:00Z""#,
        r#""+300000-01-01T00:00:00Z""#,
        r#""not a time""#,
        r#""""#,
        r#""2026-13-45T99:99:99Z""#,
        "0",
        "[]",
    ] {
        cases.push(post("/v1/jobs", job_with("run_at", raw), Field("run_at")));
    }
    let long_key = format!("\"{}\"", "k".repeat(LONG));
    for raw in [
        r#""""#,
        r#""   ""#,
        r#""a\u0000b""#,
        r#""x\ny""#,
        r#""\u001b[31m""#,
        "5",
        long_key.as_str(),
    ] {
        cases.push(post(
            "/v1/jobs",
            job_with("idempotency_key", raw),
            Field("idempotency_key"),
        ));
    }
    let big = format!(
        r#"{{"kind": "noop", "payload": {{"s": "{}"}}}}"#,
        "x".repeat(1024 * 1024)
    );
    cases.push(post("/v1/jobs", big, Field("payload")));
    let huge = format!(
        r#"{{"kind": "noop", "payload": "{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    cases.push(post("/v1/jobs", huge, Status(413)));
    cases.push(post(
        "/v1/jobs",
        r#"{"kind": "noop", "colour": "red"}"#,
        Field("colour"),
    ));
    cases.push(post("/v1/jobs", r#"{"payload": {}}"#, Field("kind")));
    // Not an object where one is expected (serde would take a struct from an array).
    for raw in [
        r#"["noop"]"#,
        r#"["noop", {}, "default"]"#,
        r#""noop""#,
        "42",
        "null",
        "[]",
    ] {
        cases.push(post("/v1/jobs", raw, Status(422)));
    }
    // Unreadable bodies.
    let deep = format!(
        r#"{{"kind": "noop", "payload": {}{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    for raw in [
        "".as_bytes().to_vec(),
        b"{".to_vec(),
        b"{\"kind\": \"noop\"} trailing".to_vec(),
        b"{\"kind\": \"\xff\xfe\"}".to_vec(),
        br#"{"kind": "\ud800"}"#.to_vec(),
        br#"{"kind": "noop", "payload": "\udc00x"}"#.to_vec(),
        deep.into_bytes(),
        b"\xef\xbb\xbf{\"kind\": \"noop\"}\x00".to_vec(),
    ] {
        cases.push(post("/v1/jobs", raw, Status(400)));
    }
    // Content types.
    let mut plain = post("/v1/jobs", r#"{"kind": "noop"}"#, Status(415));
    plain.content_type = Some("text/plain");
    cases.push(plain);
    let mut none = post("/v1/jobs", r#"{"kind": "noop"}"#, Status(415));
    none.content_type = None;
    cases.push(none);
    // Idempotency-Key header.
    let mut tab = post("/v1/jobs", r#"{"kind": "noop"}"#, Field("idempotency_key"));
    tab.headers.push(("idempotency-key", "a\tb".into()));
    cases.push(tab);
    let mut blank = post("/v1/jobs", r#"{"kind": "noop"}"#, Field("idempotency_key"));
    blank.headers.push(("idempotency-key", " ".into()));
    cases.push(blank);
    let mut mismatch = post(
        "/v1/jobs",
        r#"{"kind": "noop", "idempotency_key": "a"}"#,
        Status(400),
    );
    mismatch.headers.push(("idempotency-key", "b".into()));
    cases.push(mismatch);

    // POST /v1/jobs/batch: the list and each element, named by index.
    let ok = r#"{"kind": "noop"}"#;
    cases.push(post("/v1/jobs/batch", batch_of(&[]), Field("jobs")));
    let many: Vec<&str> = vec![ok; 1001];
    cases.push(post("/v1/jobs/batch", batch_of(&many), Field("jobs")));
    cases.push(post("/v1/jobs/batch", r#"{"jobs": {}}"#, Field("jobs")));
    cases.push(post("/v1/jobs/batch", r#"{"jobs": null}"#, Field("jobs")));
    cases.push(post("/v1/jobs/batch", "{}", Field("jobs")));
    cases.push(post(
        "/v1/jobs/batch",
        r#"[[{"kind": "noop"}]]"#,
        Status(422),
    ));
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[ok, r#"["noop"]"#]),
        Field("jobs[1]"),
    ));
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[ok, r#"{"kind": "noop", "max_attempts": 0}"#]),
        Field("jobs[1].max_attempts"),
    ));
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[r#"{"kind": "noop", "run_at": "-5000-01-01T00:00:00Z"}"#]),
        Field("jobs[0].run_at"),
    ));
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[ok, ok, r#"{"kind": "noop", "queue": "a,b"}"#]),
        Field("jobs[2].queue"),
    ));
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[ok, r#"{"kind": "noop", "priority": 99999}"#]),
        Field("jobs[1].priority"),
    ));
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[r#"{"kind": "noop", "surprise": 1}"#]),
        Field("jobs[0].surprise"),
    ));
    let mut keyed = post("/v1/jobs/batch", batch_of(&[ok]), Status(400));
    keyed.headers.push(("idempotency-key", "batch-1".into()));
    cases.push(keyed);

    // GET /v1/jobs: every query parameter.
    let long_fields = format!("fields={}", "x".repeat(10_000));
    let long_key_query = format!("key={}", "k".repeat(LONG));
    for query in [
        "state=bogus",
        "state=%00",
        "state=",
        "queue=%00",
        "queue=a%2Cb",
        "queue=%20padded",
        "kind=%00",
        "kind=",
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=99999999999999999999",
        "cursor=xyz",
        "cursor=%00",
        "unknown=1",
        "queue=%FF",
        "fields=bogus",
        "fields=payload,%00",
        "fields=payload,secret",
        "fields=%20x",
        "fields=payload%00",
        "fields=%FF",
        "fields=PAYLOAD",
        long_fields.as_str(),
        "key=",
        "key=%20%20",
        "key=%00",
        "key=a%0Ab",
        long_key_query.as_str(),
        "created_after=",
        "created_after=yesterday",
        "created_after=2026-13-01T00:00:00Z",
        "created_after=2026-01-01",
        "created_before=%00",
        "created_before=99999-01-01T00:00:00Z",
        "created_after=2026-01-02T00:00:00Z&created_before=2026-01-01T00:00:00Z",
        "created_after=2026-01-01T00:00:00Z&created_before=2026-01-01T00:00:00Z",
    ] {
        cases.push(get(&format!("/v1/jobs?{query}"), Status(400)));
    }
    // POST /v1/jobs/bulk: the action and every filter field.
    for (body, expect) in [
        (r#"{}"#, Field("action")),
        (r#"{"action": "delete"}"#, Field("action")),
        (r#"{"action": null}"#, Status(400)),
        (r#"{"action": "retry", "dry_run": "yes"}"#, Field("dry_run")),
        (r#"{"action": "retry", "extra": 1}"#, Field("extra")),
        (r#"{"action": "retry", "filter": []}"#, Field("filter")),
        (
            r#"{"action": "retry", "filter": {"status": "failed"}}"#,
            Field("filter.status"),
        ),
        (
            r#"{"action": "retry", "filter": {"state": 3}}"#,
            Field("filter.state"),
        ),
        (
            r#"{"action": "retry", "filter": {"state": "broken"}}"#,
            Field("filter.state"),
        ),
        (
            r#"{"action": "retry", "filter": {"queue": ""}}"#,
            Field("filter.queue"),
        ),
        (
            r#"{"action": "retry", "filter": {"queue": "a b"}}"#,
            Field("filter.queue"),
        ),
        (
            r#"{"action": "cancel", "filter": {"kind": "nul\u0000"}}"#,
            Field("filter.kind"),
        ),
        (
            r#"{"action": "cancel", "filter": {"key": "   "}}"#,
            Field("filter.key"),
        ),
        (
            r#"{"action": "cancel", "filter": {"key": "nul\u0000"}}"#,
            Field("filter.key"),
        ),
        (
            r#"{"action": "cancel", "filter": {"created_after": "soon"}}"#,
            Field("filter.created_after"),
        ),
        (
            r#"{"action": "cancel", "filter": {"created_before": "0000-00-00T00:00:00Z"}}"#,
            Field("filter.created_before"),
        ),
        (
            r#"{"action": "cancel", "filter": {"created_after": "2026-01-02T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"}}"#,
            Field("filter.created_after"),
        ),
    ] {
        cases.push(post("/v1/jobs/bulk", body, expect));
    }
    let long_bulk_key = format!(
        r#"{{"action": "retry", "filter": {{"key": "{}"}}}}"#,
        "k".repeat(LONG)
    );
    cases.push(post("/v1/jobs/bulk", long_bulk_key, Field("filter.key")));
    // Job ids in paths.
    let long_id = "a".repeat(10_000);
    for id in [
        "not-a-uuid",
        "%00",
        "%FF",
        long_id.as_str(),
        "00000000-0000-0000-0000",
    ] {
        cases.push(get(&format!("/v1/jobs/{id}"), Status(400)));
        for action in ["cancel", "retry"] {
            let mut case = get(&format!("/v1/jobs/{id}/{action}"), Status(400));
            case.method = Method::POST;
            case.content_type = Some("application/json");
            cases.push(case);
        }
    }
    let unknown = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    cases.push(get(&format!("/v1/jobs/{unknown}"), Status(404)));
    let mut cancel = get(&format!("/v1/jobs/{unknown}/cancel"), Status(404));
    cancel.method = Method::POST;
    cancel.content_type = Some("application/json");
    cases.push(cancel);
    // PATCH /v1/queues/{name}, POST …/pause and …/resume: every field, and the name.
    let patch = |uri: &str, body: String, expect: Expect| {
        let mut case = post(uri, body, expect);
        case.method = Method::PATCH;
        case
    };
    for raw in [
        "0",
        "-1",
        "1000001",
        "2147483648",
        "1.5",
        "\"5\"",
        "true",
        "[]",
        "{}",
    ] {
        cases.push(patch(
            "/v1/queues/q",
            format!(r#"{{"concurrency_limit": {raw}}}"#),
            Field("concurrency_limit"),
        ));
        cases.push(patch(
            "/v1/queues/q",
            format!(r#"{{"key_concurrency": {raw}}}"#),
            Field("key_concurrency"),
        ));
    }
    for (raw, field) in [
        (r#"{"count": 0, "period_ms": 1000}"#, "rate_limit.count"),
        (r#"{"count": -5, "period_ms": 1000}"#, "rate_limit.count"),
        (
            r#"{"count": 1000001, "period_ms": 1000}"#,
            "rate_limit.count",
        ),
        (r#"{"count": 10, "period_ms": 0}"#, "rate_limit.period_ms"),
        (
            r#"{"count": 10, "period_ms": 86400001}"#,
            "rate_limit.period_ms",
        ),
        (
            r#"{"count": 10, "period_ms": 99999999999}"#,
            "rate_limit.period_ms",
        ),
        (r#"{"count": 10}"#, "rate_limit.period_ms"),
        (r#"{"period_ms": 10}"#, "rate_limit.count"),
        (
            r#"{"count": 10, "period_ms": 10, "burst": 3}"#,
            "rate_limit.burst",
        ),
        (r#"10"#, "rate_limit"),
        (r#""10/1s""#, "rate_limit"),
        (r#"[10, 1000]"#, "rate_limit"),
    ] {
        cases.push(patch(
            "/v1/queues/q",
            format!(r#"{{"rate_limit": {raw}}}"#),
            Field(field),
        ));
    }
    cases.push(patch(
        "/v1/queues/q",
        r#"{"paused": "yes"}"#.into(),
        Field("paused"),
    ));
    cases.push(patch(
        "/v1/queues/q",
        r#"{"bogus": 1}"#.into(),
        Field("bogus"),
    ));
    cases.push(patch("/v1/queues/q", "[]".into(), Status(422)));
    cases.push(patch("/v1/queues/q", "{".into(), Status(400)));
    let long = "x".repeat(LONG);
    for name in ["a%20b", "a,b", "%00", "tab%09", long.as_str()] {
        cases.push(patch(
            &format!("/v1/queues/{name}"),
            "{}".into(),
            Field("queue"),
        ));
        cases.push(post(
            &format!("/v1/queues/{name}/pause"),
            "",
            Field("queue"),
        ));
        cases.push(post(
            &format!("/v1/queues/{name}/resume"),
            "",
            Field("queue"),
        ));
    }
    // PUT /v1/schedules/{name}: every field, the name; the other schedule routes.
    let put = |uri: &str, body: String, expect: Expect| {
        let mut case = post(uri, body, expect);
        case.method = Method::PUT;
        case
    };
    let schedule_with = |field: &str, raw: &str| {
        format!(r#"{{"cron": "* * * * *", "kind": "noop", "{field}": {raw}}}"#)
    };
    for raw in [
        r#""""#,
        r#""* * * *""#,
        r#""* * * * * * *""#,
        r#""61 * * * *""#,
        r#""* 25 * * *""#,
        r#""*/0 * * * *""#,
        r#""0 0 31 2 *""#,
        r#""every day""#,
        r#""nul\u0000 * * * *""#,
        "5",
        "null",
        "[]",
    ] {
        cases.push(put(
            "/v1/schedules/s",
            format!(r#"{{"cron": {raw}, "kind": "noop"}}"#),
            Field("cron"),
        ));
    }
    for raw in [
        r#""""#,
        r#""Mars/Olympus""#,
        r#""utc+1""#,
        r#""Europe/Berlin\u0000""#,
        "1",
        "[]",
    ] {
        cases.push(put(
            "/v1/schedules/s",
            schedule_with("timezone", raw),
            Field("timezone"),
        ));
    }
    for (field, raw) in [
        ("misfire", r#""run_twice""#),
        ("misfire", "1"),
        ("paused", r#""yes""#),
        ("priority", "40000"),
        ("priority", "1.5"),
        ("priority", r#""1""#),
        ("max_attempts", "2147483648"),
        ("max_attempts", "1e10"),
        ("max_attempts", "0"),
        ("max_attempts", "-1"),
        ("queue", r#""a b""#),
        ("queue", r#""""#),
        ("bogus", "1"),
    ] {
        cases.push(put(
            "/v1/schedules/s",
            schedule_with(field, raw),
            Field(field),
        ));
    }
    for raw in bad_names() {
        if raw != "null" {
            cases.push(put(
                "/v1/schedules/s",
                format!(r#"{{"cron": "* * * * *", "kind": {raw}}}"#),
                Field("kind"),
            ));
        }
    }
    cases.push(put(
        "/v1/schedules/s",
        r#"{"kind": "noop"}"#.into(),
        Field("cron"),
    ));
    cases.push(put(
        "/v1/schedules/s",
        r#"{"cron": "* * * * *"}"#.into(),
        Field("kind"),
    ));
    cases.push(put("/v1/schedules/s", "[]".into(), Status(422)));
    cases.push(put("/v1/schedules/s", "{".into(), Status(400)));
    let long_schedule = "s".repeat(201);
    for name in ["a%20b", "a,b", "%00", long_schedule.as_str()] {
        cases.push(put(
            &format!("/v1/schedules/{name}"),
            r#"{"cron": "* * * * *", "kind": "noop"}"#.into(),
            Field("name"),
        ));
    }
    // A cron text is bounded: every listing returns it.
    cases.push(put(
        "/v1/schedules/s",
        format!(
            r#"{{"cron": "{}* * * * *", "kind": "noop"}}"#,
            " ".repeat(1100)
        ),
        Field("cron"),
    ));
    cases.push(get("/v1/schedules/none", Status(404)));
    let mut delete_schedule = get("/v1/schedules/none", Status(404));
    delete_schedule.method = Method::DELETE;
    delete_schedule.content_type = Some("application/json");
    cases.push(delete_schedule);
    cases.push(post("/v1/schedules/none/pause", "", Status(404)));
    cases.push(post("/v1/schedules/none/resume", "", Status(404)));
    // Routes and methods that do not exist.
    cases.push(get("/v1/nothing", Status(404)));
    let mut delete = get("/v1/jobs", Status(405));
    delete.method = Method::DELETE;
    delete.content_type = Some("application/json");
    cases.push(delete);

    // The scheduler's key namespace (docs/operations.md): a client key there could squat a slot.
    cases.push(post(
        "/v1/jobs",
        job_with("idempotency_key", r#""schedule:sq:2026-12-06T00:00:00Z""#),
        Field("idempotency_key"),
    ));
    let mut squat = post("/v1/jobs", r#"{"kind": "noop"}"#, Field("idempotency_key"));
    squat
        .headers
        .push(("idempotency-key", "schedule:sq:2026-12-06T00:00:00Z".into()));
    cases.push(squat);
    cases.push(post(
        "/v1/jobs/batch",
        batch_of(&[
            r#"{"kind": "noop"}"#,
            r#"{"kind": "noop", "idempotency_key": "schedule:x"}"#,
        ]),
        Field("jobs[1].idempotency_key"),
    ));
    // Two Idempotency-Key headers: which one was meant?
    let mut twice = post("/v1/jobs", r#"{"kind": "noop"}"#, Status(400));
    twice.headers.push(("idempotency-key", "a".into()));
    twice.headers.push(("idempotency-key", "b".into()));
    cases.push(twice);
    // Webhook headers that frame the request or belong to one hop.
    for name in [
        "Content-Length",
        "host",
        "Transfer-Encoding",
        "Connection",
        "TE",
        "Upgrade",
    ] {
        let hook = format!(
            r#"{{"kind": "webhook", "payload": {{"url": "https://x.example/", "headers": {{"{name}": "2"}}}}}}"#
        );
        cases.push(post(
            "/v1/jobs",
            hook.clone(),
            Field(Box::leak(
                format!("payload.headers.{name}").into_boxed_str(),
            )),
        ));
        cases.push(post(
            "/v1/jobs/batch",
            batch_of(&[&hook]),
            Field(Box::leak(
                format!("jobs[0].payload.headers.{name}").into_boxed_str(),
            )),
        ));
    }
    // POST /v1/claims: every field.
    let long_label = format!("\"{}\"", "w".repeat(LONG));
    let many_queues = format!(
        "[{}]",
        (0..101)
            .map(|i| format!("\"q{i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    for worker in [
        r#""""#,
        r#""   ""#,
        r#""nul\u0000""#,
        r#""new\nline""#,
        "12",
        "null",
        long_label.as_str(),
    ] {
        cases.push(post(
            "/v1/claims",
            format!(r#"{{"worker_id": {worker}, "queues": ["q"]}}"#),
            Field("worker_id"),
        ));
    }
    cases.push(post(
        "/v1/claims",
        r#"{"queues": ["q"]}"#,
        Field("worker_id"),
    ));
    for (queues, field) in [
        ("[]", "queues"),
        ("null", "queues"),
        (r#""q""#, "queues"),
        ("[1]", "queues[0]"),
        (r#"[""]"#, "queues[0]"),
        (r#"["ok", "a b"]"#, "queues[1]"),
        (r#"["nul\u0000"]"#, "queues[0]"),
        (many_queues.as_str(), "queues"),
    ] {
        cases.push(post(
            "/v1/claims",
            format!(r#"{{"worker_id": "w", "queues": {queues}}}"#),
            Field(field),
        ));
    }
    cases.push(post("/v1/claims", r#"{"worker_id": "w"}"#, Field("queues")));
    for (field, values) in [
        (
            "max",
            &["0", "1001", "-1", "1.5", "\"5\"", "99999999999"][..],
        ),
        ("wait_ms", &["60001", "-1", "1e20", "\"1s\""][..]),
        (
            "lease_ttl_ms",
            &["0", "999", "3600001", "-5", "\"30s\""][..],
        ),
    ] {
        for value in values {
            cases.push(post(
                "/v1/claims",
                format!(r#"{{"worker_id": "w", "queues": ["q"], "{field}": {value}}}"#),
                Field(field),
            ));
        }
    }
    cases.push(post(
        "/v1/claims",
        r#"{"worker_id": "w", "queues": ["q"], "extra": 1}"#,
        Field("extra"),
    ));
    // A remote worker's reports: the token, each route's fields, an unknown job.
    let job = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    for route in ["heartbeat", "complete", "fail", "release"] {
        let uri = format!("/v1/jobs/{job}/{route}");
        let error = if route == "fail" {
            r#", "error": "x""#
        } else {
            ""
        };
        for token in ["", r#""1""#, "1.5", "null", "99999999999999999999"] {
            let body = if token.is_empty() {
                format!("{{{}}}", error.trim_start_matches(", "))
            } else {
                format!(r#"{{"lease_token": {token}{error}}}"#)
            };
            cases.push(post(&uri, body, Field("lease_token")));
        }
        cases.push(post(
            &uri,
            format!(r#"{{"lease_token": 1{error}, "extra": 1}}"#),
            Field("extra"),
        ));
        cases.push(post(
            &uri,
            format!(r#"{{"lease_token": 1{error}}}"#),
            Status(404),
        ));
        cases.push(post(
            &format!("/v1/jobs/not-a-uuid/{route}"),
            format!(r#"{{"lease_token": 1{error}}}"#),
            Status(400),
        ));
    }
    let fail = format!("/v1/jobs/{job}/fail");
    for (body, field) in [
        (r#"{"lease_token": 1}"#, "error"),
        (r#"{"lease_token": 1, "error": ""}"#, "error"),
        (r#"{"lease_token": 1, "error": "   "}"#, "error"),
        (r#"{"lease_token": 1, "error": 12}"#, "error"),
        (
            r#"{"lease_token": 1, "error": "x", "retryable": "yes"}"#,
            "retryable",
        ),
        (
            r#"{"lease_token": 1, "error": "x", "retry_after_ms": -1}"#,
            "retry_after_ms",
        ),
        (
            r#"{"lease_token": 1, "error": "x", "retry_after_ms": 1e30}"#,
            "retry_after_ms",
        ),
        (
            r#"{"lease_token": 1, "error": "x", "retry_after_ms": 31536000001}"#,
            "retry_after_ms",
        ),
    ] {
        cases.push(post(&fail, body, Field(field)));
    }
    for (body, field) in [
        (r#"{}"#, "jobs"),
        (r#"{"jobs": []}"#, "jobs"),
        (r#"{"jobs": {}}"#, "jobs"),
        (r#"{"jobs": [[]]}"#, "jobs[0]"),
        (r#"{"jobs": [{"lease_token": 1}]}"#, "jobs[0].id"),
        (r#"{"jobs": [{"id": "x", "lease_token": 1}]}"#, "jobs[0].id"),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}]}"#,
            "jobs[0].lease_token",
        ),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": "1"}]}"#,
            "jobs[0].lease_token",
        ),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 1, "x": 1}]}"#,
            "jobs[0].x",
        ),
    ] {
        cases.push(post("/v1/jobs/complete", body, Field(field)));
    }
    let thousand_and_one = format!(
        r#"{{"jobs": [{}]}}"#,
        vec![r#"{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 1}"#; 1001].join(",")
    );
    cases.push(post("/v1/jobs/complete", thousand_and_one, Field("jobs")));
    for (body, field) in [
        (r#"{}"#, "jobs"),
        (r#"{"jobs": []}"#, "jobs"),
        (r#"{"jobs": [[]]}"#, "jobs[0]"),
        (r#"{"jobs": [{"lease_token": 1}]}"#, "jobs[0].id"),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}]}"#,
            "jobs[0].lease_token",
        ),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 1, "x": 1}]}"#,
            "jobs[0].x",
        ),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 1}], "lease_ttl_ms": 999}"#,
            "lease_ttl_ms",
        ),
        (
            r#"{"jobs": [{"id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "lease_token": 1}], "lease_ttl_ms": -1}"#,
            "lease_ttl_ms",
        ),
    ] {
        cases.push(post("/v1/jobs/heartbeat", body, Field(field)));
    }
    // Durable steps, sleeps, waits and signals: every field and path segment.
    let long_name = "n".repeat(LONG);
    let step = |name: &str| format!("/v1/jobs/{job}/steps/{name}");
    for name in ["%00", "a%0Ab", "%20%20", long_name.as_str()] {
        let mut case = post(&step(name), r#"{"lease_token": 1}"#, Field("name"));
        case.method = Method::PUT;
        cases.push(case);
        cases.push(post(
            &format!("/v1/jobs/{job}/signals/{name}"),
            "{}",
            Field("name"),
        ));
    }
    let mut reserved = post(&step("faultline:x"), r#"{"lease_token": 1}"#, Field("name"));
    reserved.method = Method::PUT;
    cases.push(reserved);
    for (body, expect) in [
        (r#"{}"#, Field("lease_token")),
        (r#"{"lease_token": "1"}"#, Field("lease_token")),
        (r#"{"lease_token": 1, "result": "\ud800"}"#, Status(400)),
        (r#"{"lease_token": 1, "x": 1}"#, Field("x")),
    ] {
        let mut case = post(&step("charge"), body, expect);
        case.method = Method::PUT;
        cases.push(case);
    }
    let sleep = format!("/v1/jobs/{job}/sleep");
    for (body, field) in [
        (r#"{"lease_token": 1}"#, "until"),
        (r#"{"lease_token": 1, "until": "soon"}"#, "until"),
        (
            r#"{"lease_token": 1, "until": "99999-01-01T00:00:00Z"}"#,
            "until",
        ),
        (r#"{"lease_token": 1, "until": ""}"#, "until"),
        (
            r#"{"lease_token": 1, "until": "2026-01-01T00:00:00Z", "seq": 0}"#,
            "seq",
        ),
        (
            r#"{"lease_token": 1, "until": "2026-01-01T00:00:00Z", "seq": -1}"#,
            "seq",
        ),
        (
            r#"{"lease_token": 1, "until": "2026-01-01T00:00:00Z", "seq": 99999999999}"#,
            "seq",
        ),
        (r#"{"until": "2026-01-01T00:00:00Z"}"#, "lease_token"),
    ] {
        cases.push(post(&sleep, body, Field(field)));
    }
    let wait = format!("/v1/jobs/{job}/wait");
    for (body, field) in [
        (r#"{"lease_token": 1, "timeout_ms": 1000}"#, "signal"),
        (
            r#"{"lease_token": 1, "signal": "", "timeout_ms": 1000}"#,
            "signal",
        ),
        (
            r#"{"lease_token": 1, "signal": "   ", "timeout_ms": 1000}"#,
            "signal",
        ),
        (
            r#"{"lease_token": 1, "signal": "nul\u0000", "timeout_ms": 1000}"#,
            "signal",
        ),
        (r#"{"lease_token": 1, "signal": "go"}"#, "timeout_ms"),
        (
            r#"{"lease_token": 1, "signal": "go", "timeout_ms": -1}"#,
            "timeout_ms",
        ),
        (
            r#"{"lease_token": 1, "signal": "go", "timeout_ms": 1.5}"#,
            "timeout_ms",
        ),
        (
            r#"{"lease_token": 1, "signal": "go", "timeout_ms": 3153600000001}"#,
            "timeout_ms",
        ),
        (
            r#"{"lease_token": 1, "signal": "go", "timeout_ms": 1e30}"#,
            "timeout_ms",
        ),
    ] {
        cases.push(post(&wait, body, Field(field)));
    }
    let long_signal = format!(
        r#"{{"lease_token": 1, "signal": "{}", "timeout_ms": 1}}"#,
        "s".repeat(LONG)
    );
    cases.push(post(&wait, long_signal, Field("signal")));
    for (body, expect) in [
        (r#"{"payload": "\ud800"}"#, Status(400)),
        (r#"{"payload": 1, "x": 1}"#, Field("x")),
    ] {
        cases.push(post(&format!("/v1/jobs/{job}/signals/go"), body, expect));
    }
    cases.push(get("/v1/jobs/not-a-uuid/steps", Status(400)));
    let heartbeat = format!("/v1/jobs/{job}/heartbeat");
    for ttl in ["0", "999", "3600001", "-1", "\"30s\""] {
        cases.push(post(
            &heartbeat,
            format!(r#"{{"lease_token": 1, "lease_ttl_ms": {ttl}}}"#),
            Field("lease_ttl_ms"),
        ));
    }
    cases.push(post(
        &format!("/v1/jobs/{job}/complete"),
        r#"{"lease_token": 1, "result": "\ud800"}"#,
        Status(400),
    ));
    // CSRF (docs/http-api.md): a cross-site form post, and any change from another origin.
    for uri in [
        "/v1/queues/q3/pause",
        "/v1/queues/q3/resume",
        "/v1/jobs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/cancel",
        "/v1/jobs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/retry",
        "/v1/schedules/s/pause",
        "/v1/schedules/s/resume",
        "/v1/jobs",
        "/v1/jobs/bulk",
        "/v1/claims",
        "/v1/jobs/0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/complete",
    ] {
        for content_type in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let mut form = post(uri, "", Status(415));
            form.content_type = content_type;
            cases.push(form);
        }
        for origin in ["https://evil.example", "null", "http://localhost:9999"] {
            let mut cross = post(uri, "", Status(403));
            cross.headers.push(("host", "localhost:8000".into()));
            cross.headers.push(("origin", origin.into()));
            cases.push(cross);
        }
    }
    cases
}

#[tokio::test]
async fn every_bad_request_answers_4xx_json_naming_the_problem_and_writes_nothing() {
    let db = TestDb::new().await;
    let (router, _) = router(&db, ApiConfig::default());
    let cases = http_cases();
    assert!(cases.len() >= 130, "the corpus shrank: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut request = Request::builder()
            .method(case.method.clone())
            .uri(case.uri.as_str());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(case.body.clone().map_or_else(Body::empty, Body::from))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let is_json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let label = format!(
            "{} {} {}",
            case.method,
            crate::harness::text_preview(&case.uri),
            crate::harness::text_preview(&String::from_utf8_lossy(
                case.body.as_deref().unwrap_or(b"")
            ))
        );
        let expected_status = match case.expect {
            Expect::Status(code) => code,
            Expect::Field(_) => 422,
        };
        let problems: Vec<String> = [
            (status.as_u16() != expected_status)
                .then(|| format!("status {status}, expected {expected_status}")),
            (!is_json).then(|| "not a JSON error body".to_owned()),
            (!body["error"]["code"].is_string() || !body["error"]["message"].is_string())
                .then(|| format!("no error code/message: {body}")),
            match case.expect {
                Expect::Field(field) if body["error"]["field"] != json!(field) => Some(format!(
                    "field {}, expected {field:?}",
                    body["error"]["field"]
                )),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            failures.push(format!("{label}: {}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let written: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(written, 0, "a refused request wrote a job");
    let settings: i64 = sqlx::query_scalar("select count(*) from faultline.queue_settings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(settings, 0, "a refused request wrote queue settings");
    let schedules: i64 = sqlx::query_scalar("select count(*) from faultline.schedules")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(schedules, 0, "a refused request wrote a schedule");
    let workers: i64 = sqlx::query_scalar("select count(*) from faultline.workers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "a refused claim listed a worker");

    // The same router still takes a good request.
    let (status, _, _) = crate::harness::http::call(
        &router,
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "noop"})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

/// (arguments, the flag the error must name). None of these may start the command.
fn flag_cases() -> Vec<(Vec<&'static str>, &'static str)> {
    let worker = |flag: &'static str, value: &'static str| (vec!["worker", flag, value], flag);
    let serve = |flag: &'static str, value: &'static str| (vec!["serve", flag, value], flag);
    vec![
        serve("--allowed-hosts", "a b"),
        serve("--allowed-hosts", "x.example,,y"),
        serve("--allowed-hosts", "x.example/path"),
        worker("--lease-ttl", "300000years"),
        worker("--lease-ttl", "0s"),
        worker("--lease-ttl", "abc"),
        worker("--lease-ttl", ""),
        worker("--retry-base", "290000years"),
        worker("--retry-cap", "290000years"),
        worker("--retention", "300000years"),
        worker("--shutdown-grace", "300000years"),
        worker("--webhook-timeout", "300000years"),
        worker("--poll-interval", "0s"),
        worker("--heartbeat-interval", "1y"),
        worker("--concurrency", "0"),
        (vec!["worker", "--concurrency=-1"], "--concurrency"),
        worker("--concurrency", "99999999999"),
        worker("--queues", "a b"),
        worker("--queues", ""),
        worker("--queues", "ok,,x"),
        worker("--queues", "nul\u{1}"),
        worker("--worker-id", ""),
        worker("--worker-id", "a\u{7}b"),
        worker("--metrics-listen", "nonsense"),
        worker("--webhook-proxy", "ftp://proxy:21"),
        worker("--webhook-proxy", "not a url"),
        worker("--db-pool-size", "0"),
        worker("--max-result-bytes", "16777217"),
        worker("--max-result-bytes", "big"),
        (
            vec!["worker", "--max-result-bytes=-1"],
            "--max-result-bytes",
        ),
        (
            vec!["up", "--max-result-bytes", "1e9"],
            "--max-result-bytes",
        ),
        (
            vec!["jobs", "enqueue", "noop", "--depends-on", "nope"],
            "--depends-on",
        ),
        (
            vec!["jobs", "enqueue", "noop", "--depends-on", ""],
            "--depends-on",
        ),
        (
            vec!["jobs", "enqueue", "noop", "--unique-for", "soon"],
            "--unique-for",
        ),
        (
            vec!["jobs", "enqueue", "noop", "--unique-for=-5s"],
            "--unique-for",
        ),
        (
            vec!["jobs", "enqueue", "noop", "--unique", "--unique=yes"],
            "--unique",
        ),
        worker("--prefetch", "10001"),
        worker("--prefetch", "99999999999"),
        worker("--prefetch", "many"),
        (vec!["worker", "--prefetch=-1"], "--prefetch"),
        worker("--leader-ttl", "0s"),
        worker("--leader-ttl", "300000years"),
        worker("--reaper-interval", "0s"),
        worker("--listen-database-url", "mysql://127.0.0.1:1/x"),
        worker("--listen-database-url", "no url"),
        serve("--leader-ttl", "1ms"),
        serve("--depth-interval", "0s"),
        serve("--retention", "forever"),
        (vec!["up", "--leader-ttl", "10"], "--leader-ttl"),
        (vec!["workers", "--url", "ftp://x"], "--url"),
        (vec!["workers", "--token", "a\nb"], "--token"),
        worker("--database-url", "http://127.0.0.1:1/x"),
        worker("--database-url", "mysql://127.0.0.1:1/x"),
        serve("--listen", "nonsense"),
        serve("--api-token", "with space"),
        serve("--api-token", "new\nline"),
        (
            vec!["serve", "--max-payload-bytes=-1"],
            "--max-payload-bytes",
        ),
        serve("--request-timeout", "300000years"),
        serve("--max-connections", "0"),
        serve("--header-read-timeout", "0s"),
        serve("--database-url", "mysql://127.0.0.1:1/x"),
        (
            vec!["migrate", "--database-url", "http://127.0.0.1:1/x"],
            "--database-url",
        ),
        (vec!["jobs", "list", "--token", "a\nb"], "--token"),
        (vec!["jobs", "list", "--url", "not a url"], "--url"),
        (vec!["jobs", "list", "--url", "ftp://x"], "--url"),
        (vec!["jobs", "list", "--limit=-5"], "--limit"),
        (vec!["bench", "--only", "everything"], "--only"),
        (vec!["bench", "--rate", "0"], "--rate"),
        (vec!["bench", "--rate", "fast"], "--rate"),
        (vec!["bench", "--rate", "99999999999"], "--rate"),
        (
            vec!["bench", "--pressure-scenarios", "meteor"],
            "--pressure-scenarios",
        ),
        (
            vec!["bench", "--pressure-scenarios", ""],
            "--pressure-scenarios",
        ),
        (
            vec!["bench", "--pressure-phases", "1m,2m"],
            "--pressure-phases",
        ),
        (
            vec!["bench", "--pressure-phases", "0s,1m,1m"],
            "--pressure-phases",
        ),
        (
            vec!["bench", "--pressure-phases", "1m,300000years,1m"],
            "--pressure-phases",
        ),
        (
            vec!["bench", "--pressure-phases", "1m,,1m"],
            "--pressure-phases",
        ),
        (vec!["bench", "--only", ""], "--only"),
        (vec!["bench", "--backlog", "10"], "--backlog"),
        (vec!["bench", "--backlog", "999999999999"], "--backlog"),
        (vec!["bench", "--soak", "300000years"], "--soak"),
        (vec!["bench", "--soak", "soon"], "--soak"),
        (vec!["bench", "--soak-pin", "20m"], "--soak-pin"),
        (
            vec!["bench", "--soak", "30s", "--soak-pin", "11s"],
            "--soak-pin",
        ),
        (vec!["bench", "--soak-pin", "300000years"], "--soak-pin"),
        (vec!["bench", "--soak-pin", "never"], "--soak-pin"),
        (vec!["bench", "--soak-pin", ""], "--soak-pin"),
        (vec!["bench", "--sweep", "2by128"], "--sweep"),
        (vec!["bench", "--sweep", "0x128"], "--sweep"),
        (vec!["bench", "--sweep", "2x0"], "--sweep"),
        (vec!["bench", "--sweep", "2x128+99999"], "--sweep"),
        (vec!["bench", "--sweep", " "], "--sweep"),
        (
            vec!["bench", "--concurrency-limit", "0"],
            "--concurrency-limit",
        ),
        (
            vec!["queues", "set", "q", "--concurrency-limit", "0"],
            "--concurrency-limit",
        ),
        (
            vec!["queues", "set", "q", "--concurrency-limit=-3"],
            "--concurrency-limit",
        ),
        (
            vec!["queues", "set", "q", "--rate-limit", "10"],
            "--rate-limit",
        ),
        (
            vec!["queues", "set", "q", "--rate-limit", "0/1s"],
            "--rate-limit",
        ),
        (
            vec!["queues", "set", "q", "--rate-limit", "10/0s"],
            "--rate-limit",
        ),
        (
            vec!["queues", "set", "q", "--rate-limit", "10/2d"],
            "--rate-limit",
        ),
        (vec!["queues", "list", "--url", "ftp://x"], "--url"),
        (
            vec!["queues", "set", "q", "--key-concurrency", "0"],
            "--key-concurrency",
        ),
        (
            vec!["queues", "set", "q", "--key-concurrency", "1000001"],
            "--key-concurrency",
        ),
        (
            vec![
                "schedules",
                "put",
                "s",
                "--cron",
                "* * * * *",
                "--kind",
                "k",
                "--payload",
                "{",
            ],
            "--payload",
        ),
        (
            vec![
                "schedules",
                "put",
                "s",
                "--cron",
                "* * * * *",
                "--kind",
                "k",
                "--payload",
                "",
            ],
            "--payload",
        ),
        (
            vec![
                "schedules",
                "put",
                "s",
                "--cron",
                "* * * * *",
                "--kind",
                "k",
                "--payload",
                r#""\udc00""#,
            ],
            "--payload",
        ),
        (
            vec![
                "schedules",
                "put",
                "s",
                "--cron",
                "* * * * *",
                "--kind",
                "k",
                "--misfire",
                "later",
            ],
            "--misfire",
        ),
        (
            vec![
                "schedules",
                "put",
                "s",
                "--cron",
                "* * * * *",
                "--kind",
                "k",
                "--priority",
                "40000",
            ],
            "--priority",
        ),
        (
            vec![
                "schedules",
                "put",
                "s",
                "--cron",
                "* * * * *",
                "--kind",
                "k",
                "--max-attempts",
                "x",
            ],
            "--max-attempts",
        ),
        (vec!["schedules", "put", "s", "--kind", "k"], "--cron"),
        (vec!["schedules", "list", "--url", "ftp://x"], "--url"),
        worker("--schedules", "/nonexistent/schedules.toml"),
        worker("--schedules", ""),
        serve("--schedules", "/"),
        serve("--schedules", "/nonexistent/schedules.toml"),
        (
            vec!["up", "--schedules", "/nonexistent/schedules.toml"],
            "--schedules",
        ),
    ]
}

#[tokio::test]
async fn every_bad_flag_is_refused_at_start_naming_the_flag() {
    let exe = env!("CARGO_BIN_EXE_faultline");
    let mut failures = Vec::new();
    for (args, flag) in flag_cases() {
        let mut command = tokio::process::Command::new(exe);
        command
            .args(&args)
            .env_remove("FAULTLINE_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A database that is never reached: the flags must be refused before any connection.
        if !args.contains(&"--database-url") {
            command.env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none");
        }
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} did not exit: it started despite a bad flag"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code();
        if code == Some(0) || code == Some(101) || code.is_none() || !stderr.contains(flag) {
            failures.push(format!("{args:?}: exit {code:?}, stderr {stderr:?}"));
        }
        if stderr.contains("panicked") {
            failures.push(format!("{args:?} panicked: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_bad_schedules_file_stops_the_process_naming_the_schedule_and_field() {
    let exe = env!("CARGO_BIN_EXE_faultline");
    let cases = [
        ("[[schedule]\nname = 'x'", "--schedules"),
        ("[[schedule]]\nname = 'x'\ncron = '* * *'\nkind = 'noop'", "cron"),
        (
            "[[schedule]]\nname = 'x'\ncron = '* * * * *'\ntimezone = 'Nowhere/Land'\nkind = 'noop'",
            "timezone",
        ),
        (
            "[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'noop'\n[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'noop'",
            "declared twice",
        ),
        ("[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'noop'\nbogus = 1", "bogus"),
        ("[[schedule]]\nname = 'a b'\ncron = '* * * * *'\nkind = 'noop'", "name"),
        ("[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'no op'", "kind"),
        (
            "[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'noop'\nmisfire = 'later'",
            "misfire",
        ),
        // JSON has no NaN or infinity: never stored as null.
        (
            "[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'noop'\npayload = {x = nan}",
            "payload.x",
        ),
        (
            "[[schedule]]\nname = 'x'\ncron = '* * * * *'\nkind = 'noop'\npayload = {a = [1, {b = -inf}]}",
            "payload.a[1].b",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = std::env::temp_dir().join(format!(
            "faultline-bad-schedules-{}-{i}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        for command in ["worker", "serve"] {
            let output = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::process::Command::new(exe)
                    .args([command, "--schedules", path.to_str().unwrap()])
                    .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
                    .env_remove("FAULTLINE_API_TOKEN")
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("{command} started despite schedules file {i}"))
            .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let code = output.status.code();
            if code == Some(0)
                || code == Some(101)
                || !stderr.contains("--schedules")
                || !stderr.contains(expect)
            {
                failures.push(format!(
                    "{command} file {i}: exit {code:?}, stderr {stderr:?}"
                ));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn on_loopback_a_foreign_host_reads_nothing_and_a_cross_site_form_changes_nothing() {
    let db = TestDb::new().await;
    let config = ApiConfig {
        hosts: faultline::http::HostPolicy {
            loopback_only: true,
            allowed: vec!["queue.internal".into()],
        },
        ..ApiConfig::default()
    };
    let (router, _) = router(&db, config);
    let send = |method: Method, uri: &str, headers: Vec<(&str, &str)>| {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Body::empty()).unwrap();
        let router = router.clone();
        async move { router.oneshot(request).await.unwrap().status().as_u16() }
    };
    // DNS rebinding: the browser sends the attacker's name.
    for uri in [
        "/v1/queues",
        "/v1/jobs",
        "/v1/workers",
        "/openapi.json",
        "/ui",
    ] {
        assert_eq!(
            send(Method::GET, uri, vec![("host", "attacker.example")]).await,
            403,
            "{uri}"
        );
        assert_eq!(
            send(Method::GET, uri, vec![("host", "127.0.0.1:8000")]).await,
            200,
            "{uri}"
        );
        assert_eq!(
            send(Method::GET, uri, vec![("host", "localhost:8000")]).await,
            200,
            "{uri}"
        );
        assert_eq!(
            send(Method::GET, uri, vec![("host", "queue.internal")]).await,
            200,
            "{uri}"
        );
    }
    for uri in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            send(Method::GET, uri, vec![("host", "attacker.example")]).await,
            200,
            "{uri}"
        );
    }
    // A cross-site form post: no JSON content type, a foreign origin.
    let form = vec![
        ("host", "localhost:8000"),
        ("origin", "https://evil.example"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(send(Method::POST, "/v1/queues/q3/pause", form).await, 403);
    let form = vec![
        ("host", "localhost:8000"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(send(Method::POST, "/v1/queues/q3/pause", form).await, 415);
    let settings: i64 = sqlx::query_scalar("select count(*) from faultline.queue_settings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(settings, 0, "a refused request paused the queue");
    // The server's own page (same origin, JSON) may.
    let own = vec![
        ("host", "localhost:8000"),
        ("origin", "http://localhost:8000"),
        ("content-type", "application/json"),
    ];
    assert_eq!(send(Method::POST, "/v1/queues/q3/pause", own).await, 200);
}
