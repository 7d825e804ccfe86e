//! The API's transport against hostile clients, over real sockets: stalled half-sent requests,
//! connection floods, oversized heads; and what a request without the token may learn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use faultline::http::{app, ApiConfig, AppState, ServerConfig};
use faultline::metrics::Metrics;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::harness::{wait_for, TestDb};

async fn serve_with(
    db: &TestDb,
    config: ServerConfig,
) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let router = app(AppState::new(
        db.store(),
        Arc::new(Metrics::new()),
        ApiConfig::default(),
    ));
    tokio::spawn(faultline::http::serve_with(
        listener,
        router,
        config,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// Send `bytes` on a fresh connection and read the whole answer (the server closes).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code and the JSON body of a raw HTTP answer.
fn parse_answer(answer: &str) -> (u16, Value) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn health_answers(addr: std::net::SocketAddr) -> Duration {
    let started = Instant::now();
    let answer = exchange(
        addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_thousand_stalled_half_sent_requests_leave_health_responsive_and_time_out_with_408() {
    let db = TestDb::new().await;
    let config = ServerConfig {
        header_read_timeout: Duration::from_secs(3),
        ..ServerConfig::default()
    };
    let (addr, shutdown) = serve_with(&db, config).await;
    let mut stalled = Vec::new();
    for _ in 0..3000 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Every stalled socket is still held, yet a real client is served at once.
    for _ in 0..5 {
        let took = health_answers(addr).await;
        assert!(took < Duration::from_secs(2), "/health took {took:?}");
    }
    // The stalled ones are answered 408 with the JSON error body and closed.
    for stream in stalled.iter_mut().take(20) {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes a stalled connection after the header timeout")
            .unwrap();
        let (status, body) = parse_answer(&String::from_utf8_lossy(&answer));
        assert_eq!(status, 408);
        assert_eq!(body["error"]["code"], "request_timeout");
    }
    drop(stalled);
    health_answers(addr).await;
    shutdown.cancel();
}

#[tokio::test]
async fn one_connection_over_the_limit_is_answered_503_and_closed() {
    let db = TestDb::new().await;
    let config = ServerConfig {
        max_connections: 20,
        header_read_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let (addr, shutdown) = serve_with(&db, config).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    let answer = wait_for(
        "the limit to be reached",
        Duration::from_secs(10),
        || async {
            let answer = exchange(addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
            answer.starts_with("HTTP/1.1 503").then_some(answer)
        },
    )
    .await;
    let (_, body) = parse_answer(&answer);
    assert_eq!(body["error"]["code"], "too_many_connections");
    // A slot freed is a slot served.
    drop(held);
    wait_for(
        "a freed slot to serve /health",
        Duration::from_secs(10),
        || async {
            let answer = exchange(
                addr,
                b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            answer.starts_with("HTTP/1.1 200").then_some(())
        },
    )
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn oversized_and_malformed_request_heads_get_the_json_error_body() {
    let db = TestDb::new().await;
    let (addr, shutdown) = serve_with(&db, ServerConfig::default()).await;
    let long_uri = format!(
        "GET /v1/jobs?q={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(9000)
    );
    let big_header = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let many_headers = format!(
        "GET /health HTTP/1.1\r\n{}\r\n",
        (0..200)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect::<String>()
    );
    for (request, status, code) in [
        (long_uri.into_bytes(), 414, "uri_too_long"),
        (big_header.into_bytes(), 431, "headers_too_large"),
        (many_headers.into_bytes(), 431, "headers_too_large"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            b"GET /health HTTP/1.1\r\nbad header\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
    ] {
        let answer = exchange(addr, &request).await;
        let (got, body) = parse_answer(&answer);
        assert_eq!(got, status, "{answer:.200}");
        assert_eq!(body["error"]["code"], code, "{answer:.200}");
    }
    // Later requests on a kept-alive connection are answered by the same stack.
    let answer = exchange(
        addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\n\r\nGET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains(r#""code":"not_found""#), "{answer}");
    shutdown.cancel();
}

#[tokio::test]
async fn with_a_token_set_unknown_routes_and_methods_answer_401_before_404_or_405() {
    let db = TestDb::new().await;
    let (router, _) = crate::harness::http::router(
        &db,
        ApiConfig {
            api_token: Some("s3cret".into()),
            ..ApiConfig::default()
        },
    );
    let call = |method: Method, uri: &'static str, auth: bool| {
        let router = router.clone();
        async move {
            let headers: &[(&str, &str)] = if auth {
                &[("authorization", "Bearer s3cret")]
            } else {
                &[]
            };
            crate::harness::http::call(&router, method, uri, None, headers).await
        }
    };
    for (method, uri, without, with) in [
        (Method::GET, "/v1/secret-route", 401, 404),
        (Method::GET, "/admin", 401, 404),
        (Method::DELETE, "/v1/jobs", 401, 405),
        (Method::PUT, "/v1/queues", 401, 405),
        (Method::GET, "/health", 200, 200),
        (Method::POST, "/health", 405, 405),
    ] {
        let (status, _, body) = call(method.clone(), uri, false).await;
        assert_eq!(
            status.as_u16(),
            without,
            "{method} {uri} without the token: {body}"
        );
        assert!(body["error"]["code"].is_string() || status == 200, "{body}");
        let (status, _, _) = call(method.clone(), uri, true).await;
        assert_eq!(status.as_u16(), with, "{method} {uri} with the token");
    }
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let db = TestDb::new().await;
    let config = ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let (addr, shutdown) = serve_with(&db, config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an idle connection is not kept for ever")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "kept for its idle time"
    );
    shutdown.cancel();
}

/// The second and later requests of a kept-alive connection are held to the first's limits,
/// with the same JSON error body (hyper, which parses them, would let a 20 KB request line or
/// an 80 KB header through, and answers what it refuses with an empty body).
#[tokio::test]
async fn every_request_of_a_kept_alive_connection_is_held_to_the_same_limits() {
    let db = TestDb::new().await;
    let (addr, shutdown) = serve_with(&db, ServerConfig::default()).await;
    let first = "GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
    let cases = [
        (
            format!(
                "GET /v1/jobs?q={} HTTP/1.1\r\nhost: x\r\n\r\n",
                "a".repeat(20_000)
            ),
            414,
            "uri_too_long",
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "b".repeat(66_000)
            ),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "b".repeat(80_000)
            ),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\n{}\r\n",
                (0..150)
                    .map(|i| format!("x-{i}: v\r\n"))
                    .collect::<String>()
            ),
            431,
            "headers_too_large",
        ),
        (
            "GET /health HTTP/1.1\r\nbad header\r\n\r\n".to_owned(),
            400,
            "malformed_request",
        ),
    ];
    for (second, status, code) in cases {
        let answer = exchange(addr, format!("{first}{second}").as_bytes()).await;
        let later = answer
            .match_indices("HTTP/1.1 ")
            .nth(1)
            .map(|(at, _)| &answer[at..])
            .unwrap_or_else(|| panic!("no second answer: {answer:.300}"));
        let (got, body) = parse_answer(later);
        assert_eq!(got, status, "{later:.300}");
        assert_eq!(body["error"]["code"], code, "{later:.300}");
    }
    shutdown.cancel();
}
