//! `GET /ui` (docs/http-api.md): the dashboard, three static files compiled into the binary (no CDN, no
//! build step: plain HTML, CSS and a script). The page holds no data; its script reads the JSON
//! API with the bearer token the user gives it, so these routes are open and nothing of the data
//! is served without the token. A strict Content-Security-Policy allows only these files and
//! calls to this origin.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; form-action 'none'; \
                      frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            // The binary is the version: a new release must not be served from a stale cache.
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
}

/// The page.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// Its script.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Its style sheet.
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// Whether `path` is one of the dashboard's files (served without a token).
pub fn is_ui(path: &str) -> bool {
    matches!(path, "/ui" | "/ui/" | "/ui/app.js" | "/ui/app.css")
}
