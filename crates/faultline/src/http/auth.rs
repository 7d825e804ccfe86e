//! Bearer-token authentication: when a token is configured, every route but `/health`, `/ready`
//! and `/metrics` needs `Authorization: Bearer <token>`. Both sides are hashed before a
//! constant-time comparison, so neither the token's bytes nor its length leak through timing.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if authorized(&state, request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Whether `headers` carry the configured token (always true when none is configured).
pub fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token_digest else {
        return true;
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    presented.is_some_and(|token| bool::from(digest(token).ct_eq(expected)))
}

/// The routes that need no token (the dashboard's files hold no data: see `ui.rs`).
pub fn is_open(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics") || super::ui::is_ui(path)
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
