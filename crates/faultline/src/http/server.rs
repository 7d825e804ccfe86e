//! The API's HTTP server: hyper under a connection limit, with every request head read under a
//! deadline and a size cap.
//!
//! A server that waits forever for a request's headers can be taken down without a token: open
//! many connections, send half a header, stall. Each held connection costs a file descriptor
//! and a task, and once the descriptors run out even `/health` stops answering. So:
//! - at most [`ServerConfig::max_connections`] connections are served at once; one more is
//!   answered `503` at once and closed (it never waits in the kernel's queue holding a slot);
//! - the first request head of a connection is read by us, before hyper sees the connection,
//!   within [`ServerConfig::header_read_timeout`] and [`ServerConfig::max_header_bytes`]: a head
//!   that does not arrive in time is answered `408`, one too large `431`, a request line too
//!   long `414`, one that is not HTTP `400` — each with the JSON error body every other error
//!   has — and the connection is closed;
//! - later requests on a kept-alive connection are bounded by hyper's own header read timeout,
//!   which also bounds how long an idle connection is kept.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{ErrorDetail, ErrorResponse};

/// Limits of the API's HTTP server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most connections served at once (default 10,000, lowered to what the process's file
    /// descriptor limit allows).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long an idle kept-alive
    /// connection is kept (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head: request line and headers (default 64 KiB).
    pub max_header_bytes: usize,
    /// Longest request line (default 8 KiB).
    pub max_uri_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// File descriptors kept free of connections: the database pool, the log, the listener.
const RESERVED_FDS: u64 = 256;

impl ServerConfig {
    /// `max_connections` lowered to what the file descriptor limit allows, after raising the
    /// soft limit to the hard one (what a server is expected to do for itself).
    fn effective_max_connections(&self) -> usize {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return self.max_connections;
        };
        let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            hard
        } else {
            soft
        };
        let allowed = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
        self.max_connections.min(allowed.max(1))
    }
}

/// Serve `router` on `listener` with [`ServerConfig::default`] until `shutdown`, then finish the
/// requests in flight.
///
/// # Errors
/// Never for a client's doing: accept errors (out of descriptors, a reset) are logged and the
/// loop goes on. Returns when `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, router, ServerConfig::default(), shutdown).await
}

/// [`serve`] with explicit limits.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.effective_max_connections()));
    let config = Arc::new(config);
    // The first request of a connection is checked by `read_head`; the ones after it on a
    // kept-alive connection are parsed by hyper, and held to the same limits here.
    let router = router.layer(axum::middleware::from_fn_with_state(
        config.clone(),
        within_head_limits,
    ));
    let connections = TaskTracker::new();
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(error) => {
                // EMFILE, ENFILE, ECONNABORTED: nothing to do but wait a moment and go on.
                if !accept_failing {
                    tracing::warn!(%error, "cannot accept connections; retrying");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                connections.spawn(connection(
                    stream,
                    router.clone(),
                    config.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(_) => refuse_over_limit(stream),
        }
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// 414 or 431, with the JSON error body, for a request (the second or later of a kept-alive
/// connection) whose request line or head is over the limits `read_head` holds the first to.
async fn within_head_limits(
    axum::extract::State(config): axum::extract::State<Arc<ServerConfig>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // As sent: `METHOD SP target SP HTTP/1.1`.
    let line = request.method().as_str().len() + request.uri().to_string().len() + 10;
    let head = line
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
        + 2;
    let refusal = if line > config.max_uri_bytes {
        Some(HeadError::UriTooLong)
    } else if head > config.max_header_bytes {
        Some(HeadError::TooLarge)
    } else {
        None
    };
    match refusal {
        None => next.run(request).await,
        Some(refusal) => {
            let (status, code, message) = refusal.parts(&config);
            let mut response = super::error::ApiError::Refused {
                status: axum::http::StatusCode::from_u16(status)
                    .unwrap_or(axum::http::StatusCode::BAD_REQUEST),
                code,
                message,
            }
            .into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Over the connection limit: answer 503 if the socket takes it now, and close.
fn refuse_over_limit(stream: TcpStream) {
    let response = error_response(
        503,
        "Service Unavailable",
        "too_many_connections",
        "the server is at its connection limit; retry shortly",
    );
    let _ = stream.try_write(&response);
}

async fn connection(
    mut stream: TcpStream,
    router: Router,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let head = tokio::select! {
        head = tokio::time::timeout(config.header_read_timeout, read_head(&mut stream, &config)) => head,
        _ = shutdown.cancelled() => return,
    };
    let head = match head {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(refusal)) => return answer(&mut stream, refusal.response(&config)).await,
        Err(_) => {
            let seconds = config.header_read_timeout.as_secs_f64();
            let body = error_response(
                408,
                "Request Timeout",
                "request_timeout",
                &format!("the request headers did not arrive within {seconds}s"),
            );
            return answer(&mut stream, body).await;
        }
    };
    let io = TokioIo::new(Rewind {
        prefix: head,
        offset: 0,
        inner: stream,
        config: config.clone(),
        replacing: None,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8 * 1024) + 8 * 1024);
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Write `response` (bounded in time: a client that does not read is not waited for) and close.
async fn answer(stream: &mut TcpStream, response: Vec<u8>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// Why the first request head was not handed on.
#[derive(Debug)]
enum HeadError {
    /// The client closed (or reset) before sending a whole head: nothing to answer.
    Closed,
    /// The head is larger than `max_header_bytes`.
    TooLarge,
    /// The request line is longer than `max_uri_bytes`.
    UriTooLong,
    /// Not an HTTP/1 request head.
    Malformed(String),
}

impl HeadError {
    /// Status, code and message.
    fn parts(&self, config: &ServerConfig) -> (u16, &'static str, String) {
        match self {
            HeadError::TooLarge => (
                431,
                "headers_too_large",
                format!(
                    "the request head is larger than {} bytes",
                    config.max_header_bytes
                ),
            ),
            HeadError::UriTooLong => (
                414,
                "uri_too_long",
                format!(
                    "the request line is longer than {} bytes",
                    config.max_uri_bytes
                ),
            ),
            HeadError::Malformed(why) => (
                400,
                "malformed_request",
                format!("not an HTTP/1.1 request: {why}"),
            ),
            HeadError::Closed => (400, "malformed_request", String::new()),
        }
    }

    fn response(&self, config: &ServerConfig) -> Vec<u8> {
        if let HeadError::Closed = self {
            return Vec::new();
        }
        let (status, code, message) = self.parts(config);
        let reason = axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        error_response(status, reason, code, &message)
    }
}

/// hyper's own answer to a request it could not parse (a kept-alive connection's later
/// request over its buffer, or malformed): a 4xx head with no body. Given the JSON error body
/// every other error has, naming what is wrong.
fn json_for_bare_error(written: &[u8], config: &ServerConfig) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(written).ok()?;
    let status: u16 = head.strip_prefix("HTTP/1.1 4")?.get(..2)?.parse().ok()?;
    let status = 400 + status;
    if !head.ends_with("\r\n\r\n") || !head.to_ascii_lowercase().contains("content-length: 0\r\n") {
        return None;
    }
    let error = match status {
        431 => HeadError::TooLarge,
        414 => HeadError::UriTooLong,
        _ => HeadError::Malformed("the request could not be parsed".into()),
    };
    Some(error.response(config))
}

/// Read until the end of the first request head (`\r\n\r\n`), and check it. Returns every byte
/// read, the start of the body included, for hyper to read again.
async fn read_head(stream: &mut TcpStream, config: &ServerConfig) -> Result<Vec<u8>, HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let line_end = find(&buf, b"\r\n").unwrap_or(buf.len());
        if line_end > config.max_uri_bytes {
            return Err(HeadError::UriTooLong);
        }
        match find(&buf[searched_from..], b"\r\n\r\n") {
            Some(at) => {
                let end = searched_from + at + 4;
                if end > config.max_header_bytes {
                    return Err(HeadError::TooLarge);
                }
                check_head(&buf[..end])?;
                return Ok(buf);
            }
            None if buf.len() > config.max_header_bytes => return Err(HeadError::TooLarge),
            None => {}
        }
    }
}

fn check_head(head: &[u8]) -> Result<(), HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(_) => Ok(()),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole HTTP/1.1 response carrying the API's JSON error body, closing the connection.
fn error_response(status: u16, reason: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorResponse {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            field: None,
            job_id: None,
        },
    })
    .unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// The connection with the bytes already read put back in front; hyper's own bodiless error
/// answers are given the JSON body on the way out (see [`json_for_bare_error`]).
struct Rewind {
    prefix: Vec<u8>,
    offset: usize,
    inner: TcpStream,
    config: Arc<ServerConfig>,
    /// A replacement being written: its bytes, how many are out, and the length hyper asked
    /// to write (reported once the replacement is out).
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            if let Some(json) = json_for_bare_error(buf, &this.config) {
                this.replacing = Some((json, 0, buf.len()));
            }
        }
        if let Some((bytes, out, asked)) = &mut this.replacing {
            while *out < bytes.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &bytes[*out..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => *out += n,
                    other => return other,
                }
            }
            let asked = *asked;
            this.replacing = None;
            return Poll::Ready(Ok(asked));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    // Not vectored: hyper then hands every response head over as one buffer, which is what
    // `json_for_bare_error` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_checked() {
        assert!(check_head(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").is_ok());
        assert!(matches!(
            check_head(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn error_responses_carry_the_json_body() {
        let text = String::from_utf8(error_response(
            408,
            "Request Timeout",
            "request_timeout",
            "slow",
        ))
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(text.ends_with(r#"{"error":{"code":"request_timeout","message":"slow"}}"#));
    }
}
