//! `/health` (the process lives), `/ready` (the database answers and the schema is current),
//! `/metrics` (Prometheus text). None of them needs a token.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::db;

/// How long `/ready` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 while the process lives, whatever the database does.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the database answers and the schema is current, else 503 with the reason.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`, with `warnings` naming server settings that work against the queue (autovacuum off)"),
        (status = 503, description = "`{\"status\":\"unavailable\",\"reason\":…}`"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let check =
        tokio::time::timeout(READY_TIMEOUT, db::schema_is_current(state.store.pool())).await;
    let reason = match check {
        Ok(Ok(true)) => {
            state.metrics.db_up.set(1.0);
            // Ready, with what in the server's settings works against the queue, if anything.
            let warnings = tokio::time::timeout(READY_TIMEOUT, state.store.server_warnings())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if warnings.is_empty() {
                return Json(json!({"status": "ready"})).into_response();
            }
            return Json(json!({"status": "ready", "warnings": warnings})).into_response();
        }
        Ok(Ok(false)) => {
            state.metrics.db_up.set(1.0);
            "the database schema is not current; run `faultline migrate`"
        }
        Ok(Err(_)) | Err(_) => {
            state.metrics.db_up.set(0.0);
            "the database is unreachable"
        }
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "reason": reason})),
    )
        .into_response()
}

/// Every metric in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
