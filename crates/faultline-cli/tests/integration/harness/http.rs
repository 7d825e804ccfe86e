//! The API in the test process: a router over a test database, and requests through it
//! without a socket.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use faultline::http::{app, ApiConfig, AppState};
use faultline::metrics::Metrics;
use serde_json::Value;
use tower::ServiceExt;

use super::TestDb;

pub fn router(db: &TestDb, config: ApiConfig) -> (Router, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(db.store(), metrics.clone(), config);
    (app(state), metrics)
}

/// One request; the body is sent as JSON when given.
pub async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let raw = body.map(|b| b.to_string());
    send_raw(
        router,
        method,
        uri,
        raw.as_deref(),
        Some("application/json"),
        headers,
    )
    .await
}

pub async fn send_raw(
    router: &Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, text) = send_text(router, method, uri, body, content_type, headers).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

/// [`send_raw`] answering the body's text: payloads and results are exact only there (a
/// `Value` sorts keys and respells numbers).
pub async fn send_text(
    router: &Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mutating = method != Method::GET;
    let mut request = Request::builder().method(method).uri(uri);
    // A JSON client names its content type on every mutating request, a body-less one
    // included; on reads it has nothing to name.
    if body.is_some() || mutating {
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The exact text of field `name` of the JSON object `text`.
pub fn field_text(text: &str, name: &str) -> String {
    let fields: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    fields
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .get()
        .to_owned()
}
