//! Every error leaves as JSON: the request timeout answers `408` with the API's error body, and
//! any error response a layer below produced without one (an axum rejection's plain text, an
//! empty body) is given the JSON body for its status, so that a client has one format to parse.

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Answer `408` with the JSON body when a request takes longer than the configured timeout —
/// but never after a write may have happened (docs/http-api.md: an error answer means nothing was
/// written; a write that committed is answered as a success).
///
/// A read (GET, HEAD, OPTIONS) is bounded as a whole. A write is bounded while it arrives: its
/// body must be in within the timeout, or it is answered 408 having touched nothing. Once in,
/// it runs to its end in a task of its own — dropping a handler mid-statement would not stop
/// Postgres from committing what it was sent — and is answered with what happened, however
/// long that took.
pub async fn within_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = state.config.request_timeout;
    let timed_out = || {
        ApiError::Refused {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: format!(
                "the request took longer than {}",
                humantime::format_duration(timeout)
            ),
        }
        .into_response()
    };
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => timed_out(),
        };
    }
    // The largest body any route takes; each route's own limit is applied again when its
    // handler reads the buffered body.
    let limit = (state.config.max_payload_bytes + 64 * 1024).max(state.config.max_batch_body_bytes);
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_over_limit(&e) => {
            return ApiError::PayloadTooLarge("request body is larger than the limit".into())
                .into_response()
        }
        Ok(Err(e)) => {
            return ApiError::bad_request("unreadable_body", e.to_string()).into_response()
        }
        Err(_) => return timed_out(),
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        // A handler never panics by design; if one did, nothing is known about the write.
        Err(_) => ApiError::Internal.into_response(),
    }
}

/// Whether reading a body failed because it is over the limit (rather than, say, because the
/// client hung up).
fn is_over_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Give an error response without a JSON body the body for its status.
pub async fn as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The text a layer wrote, kept as the message (bounded: it is ours, but be safe).
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    let mut fresh = ApiError::Refused {
        status,
        code: code_for(status),
        message,
    }
    .into_response();
    // Keep the headers the layer set (Retry-After, Allow, …) but the new body's type and length.
    for (name, value) in parts.headers.iter() {
        if name != CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid_field",
        431 => "headers_too_large",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}
