//! Extractors whose rejections are [`ApiError`]s naming what is wrong: a JSON body (415 for a
//! wrong content type, 413 over the limit, 400 for malformed JSON, 422 naming the field for a
//! wrong type or an unknown field), a job id in the path, and a query string.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::object::ObjectOnly;
use crate::job::JobId;

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than the limit".into())
            } else {
                ApiError::bad_request("unreadable_body", e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// 415 unless `headers` name a JSON content type (`application/json`, or any `+json`).
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type: application/json, got {content_type:?}"
        )))
    }
}

/// Deserialize `bytes`, naming the field path on a type error. A struct is read from a JSON
/// object only (see [`super::object`]).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // What a parse would let through, payloads being kept as text rather than decoded: a lone
    // surrogate escape, nesting past serde_json's limit. Malformed, wherever it is.
    if let Some(problem) = std::str::from_utf8(bytes)
        .ok()
        .and_then(crate::payload::problem)
    {
        return Err(ApiError::bad_request(
            "malformed_json",
            format!("malformed JSON: {problem}"),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // Deeply nested input is refused by serde_json's recursion limit (128) as malformed.
    let value = serde_path_to_error::deserialize(ObjectOnly(&mut deserializer)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                // A missing or unknown field is reported at its parent's path: name the field.
                let text = inner.to_string();
                let named = ["missing field `", "unknown field `"]
                    .iter()
                    .find_map(|prefix| {
                        let rest = text.strip_prefix(prefix)?;
                        rest.split('`').next().map(str::to_owned)
                    });
                let field = match (named, path.as_str()) {
                    (Some(name), ".") => name,
                    (Some(name), parent) if !parent.ends_with(&name) => format!("{parent}.{name}"),
                    _ => path.clone(),
                };
                ApiError::Invalid {
                    message: if field == "." {
                        format!("invalid request: {inner}")
                    } else {
                        format!("invalid field `{field}`: {inner}")
                    },
                    field,
                }
            }
            // A number too large for its field reads, but does not fit: the field is wrong.
            serde_json::error::Category::Syntax
                if path != "." && inner.to_string().starts_with("number out of range") =>
            {
                ApiError::Invalid {
                    message: format!("invalid field `{path}`: {inner}"),
                    field: path,
                }
            }
            _ => ApiError::bad_request("malformed_json", format!("malformed JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// The `{id}` path segment as a job id.
pub struct PathJobId(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for PathJobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
        raw.parse().map(PathJobId).map_err(|_| {
            ApiError::bad_request("invalid_id", format!("job id {raw:?} is not a UUID"))
        })
    }
}

/// The `{name}` path segment of a queue or schedule route, as text: the store checks it as a
/// name and answers 422 naming the field.
pub struct PathName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(name) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request("invalid_name", e.body_text()))?;
        Ok(PathName(name))
    }
}

/// A query string of type `T` (whose unknown parameters are refused if `T` says so).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}
