//! Poison values for the chaos drill: jobs whose handlers fail with text Postgres cannot store
//! as it is, webhook receivers that misbehave (NUL bytes and invalid UTF-8 in error answers, a
//! body that never ends, a body that stalls), and payloads whose numbers and escapes must come
//! back exactly. The chaos invariants (nothing lost, nothing stuck, attempts bounded) must hold
//! for them as for any other job, and each payload must be stored exactly as sent.

use std::time::Duration;

use faultline::Payload;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A local receiver that misbehaves by path (see the module docs); returns its base URL. It
/// lives as long as the drill's runtime.
pub async fn hostile_receiver() -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
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
                let body: &[u8] = b"\0poison\xff\xfe\0 answer";
                let status = match path.as_str() {
                    "/nul404" => "404 Not Found",
                    _ => "500 Internal Server Error",
                };
                match path.as_str() {
                    "/endless" => {
                        let head = "HTTP/1.1 500 Oops\r\ncontent-length: 1500000000\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        let chunk = vec![b'\0'; 64 * 1024];
                        let mut sent = 0usize;
                        while sent < 256 * 1024 * 1024 && socket.write_all(&chunk).await.is_ok() {
                            sent += chunk.len();
                        }
                    }
                    "/stall" => {
                        let head = "HTTP/1.1 503 Busy\r\ncontent-length: 100\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(b"\0stalled").await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    _ => {
                        let head = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body).await;
                    }
                }
            });
        }
    });
    Ok(base)
}

/// A poison job for the mix. Budgets are chosen so that "a failed job has exactly max_attempts
/// error entries" still holds: a permanent failure gets a budget of one.
pub fn job(rng: &mut StdRng, receiver: &str) -> Payload {
    let body = match rng.gen_range(0..7) {
        0 => {
            let max = rng.gen_range(2..=3);
            let message = match rng.gen_range(0..4) {
                0 => "nul \u{0} in the middle".to_owned(),
                1 => "x".repeat(200_000),
                2 => "\u{202e}reversed\u{1b}[31m escape \r\n\t and \u{0}".to_owned(),
                _ => "'; drop table faultline.jobs; --".to_owned(),
            };
            json!({"kind": "fail", "max_attempts": max,
                   "payload": {"times": rng.gen_range(0..=max), "message": message}})
        }
        1 => json!({"kind": "webhook", "max_attempts": 2,
                    "payload": {"url": format!("{receiver}/nul500")}}),
        2 => json!({"kind": "webhook", "max_attempts": 1,
                    "payload": {"url": format!("{receiver}/nul404")}}),
        3 => json!({"kind": "webhook", "max_attempts": 1,
                    "payload": {"url": format!("{receiver}/endless"), "timeout_ms": 2000}}),
        4 => json!({"kind": "webhook", "max_attempts": 2,
                    "payload": {"url": format!("{receiver}/stall"), "timeout_ms": 300}}),
        _ => return exact_job(rng),
    };
    body.into()
}

/// A job whose payload a lossy store would change: numbers beyond f64, escapes jsonb refuses,
/// keys out of order. Kept as text end to end (a `serde_json::Value` would itself respell the
/// numbers and sort the keys).
fn exact_job(rng: &mut StdRng) -> Payload {
    let text = format!(
        r#"{{"kind":"noop","payload":{{"zeta":{},"big":{EXACT_MARK},"f":0.1000000000000000055511151231257827,"nul":"\u0000","alpha":[1.50,-0.0]}}}}"#,
        rng.gen_range(0..1000)
    );
    Payload::from_json(text).unwrap_or_else(|_| Payload::null())
}

/// The number that marks an exact payload (beyond what an f64 holds).
const EXACT_MARK: &str = "123456789012345678901234567890";

/// Whether `body` is one of ours whose stored payload text must equal what was sent.
pub fn is_exact(body: &Payload) -> bool {
    body.get().contains(&format!(r#""big":{EXACT_MARK}"#))
}

/// The exact text of a request body's payload.
pub fn payload_text(body: &Payload) -> String {
    serde_json::from_str::<std::collections::HashMap<String, Box<serde_json::value::RawValue>>>(
        body.get(),
    )
    .ok()
    .and_then(|fields| fields.get("payload").map(|p| p.get().to_owned()))
    .unwrap_or_default()
}
