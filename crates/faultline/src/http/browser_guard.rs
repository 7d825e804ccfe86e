//! What keeps a browser on another site from using the API through its user (docs/http-api.md), with or
//! without a token:
//!
//! - **CSRF.** A cross-site page can make a browser send a form post (`text/plain`,
//!   `application/x-www-form-urlencoded`, `multipart/form-data`) with no preflight, and the
//!   browser would carry no token but also need none when none is configured. So every mutating
//!   request (POST, PUT, PATCH, DELETE) must say `Content-Type: application/json` — which a page
//!   can only send after a CORS preflight, which we never grant — a body-less route included
//!   (415 otherwise). A request whose `Origin` is not the server's own (the `Host` it was sent
//!   to) is refused (403), so a same-site page on another port cannot either.
//! - **DNS rebinding.** A page whose name first resolves to the attacker and then to 127.0.0.1
//!   reads our answers as its own origin; the browser sends the attacker's name as `Host`. While
//!   the server listens on a loopback address, a `Host` that is neither a loopback name or
//!   address nor in `--allowed-hosts` is refused (403).
//!
//! `/health`, `/ready` and `/metrics` stay open: probes and scrapers call them by any name.

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::require_json;
use super::AppState;

/// Which `Host` headers the API answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Refuse a `Host` that is not a loopback name or address nor one of `allowed`: set when
    /// the server listens on a loopback address (where only this machine's clients, and a
    /// rebinding page in its browser, can reach it).
    pub loopback_only: bool,
    /// Further host names (no port) to answer, lowercase; `--allowed-hosts`.
    pub allowed: Vec<String>,
}

impl HostPolicy {
    /// Whether a request sent to `host` (the header's value, port included) is answered.
    pub fn allows(&self, host: &str) -> bool {
        if !self.loopback_only {
            return true;
        }
        let name = host_name(host).to_ascii_lowercase();
        is_loopback_name(&name) || self.allowed.contains(&name)
    }
}

/// Why a `--allowed-hosts` entry cannot be used, or `None`.
pub fn allowed_host_problem(entry: &str) -> Option<String> {
    let ok = !entry.is_empty()
        && entry.len() <= 253
        && entry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    (!ok).then(|| {
        format!("{entry:?} is not a host name or address (letters, digits, '.', '-', no port)")
    })
}

/// The name part of a `Host` value: without its port, an IPv6 literal without its brackets.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The authority (`host[:port]`) of an `Origin` value, with the scheme's default port dropped;
/// `None` for `null` or anything that is not an origin.
fn origin_authority(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    Some(
        authority
            .strip_suffix(default_port)
            .map(str::to_owned)
            .unwrap_or(authority),
    )
}

/// `Host` without the default ports (which a browser leaves out of `Origin`).
fn host_authority(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    for port in [":80", ":443"] {
        if let Some(bare) = host.strip_suffix(port) {
            return bare.to_owned();
        }
    }
    host
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::Refused {
        status: StatusCode::FORBIDDEN,
        code,
        message,
    }
}

/// The middleware.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(request.uri().path(), "/health" | "/ready" | "/metrics") {
        return next.run(request).await;
    }
    if let Err(refusal) = refusal(&state.config.hosts, request.method(), request.headers()) {
        return refusal.into_response();
    }
    next.run(request).await
}

fn refusal(policy: &HostPolicy, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = match headers.get(HOST) {
        Some(value) => Some(value.to_str().map_err(|_| {
            forbidden(
                "host_not_allowed",
                "the Host header is not visible ASCII".into(),
            )
        })?),
        None => None,
    };
    if let Some(host) = host {
        if !policy.allows(host) {
            return Err(forbidden(
                "host_not_allowed",
                format!(
                    "Host {host:?} is not a name of this server (it listens on a loopback \
                     address: add the name to --allowed-hosts to answer it)"
                ),
            ));
        }
    }
    let mutating = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !mutating {
        return Ok(());
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let own = host.map(host_authority);
        let sent = origin.to_str().ok().and_then(origin_authority);
        if sent.is_none() || sent != own {
            return Err(forbidden(
                "cross_origin",
                format!(
                    "Origin {:?} is not this server's own: changes are accepted from this \
                     server's pages and from clients that send no Origin",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
    }
    Ok(())
}

/// A route layer (it runs only for a route and method that exist, so an unknown method is
/// answered 405, not 415): a change must say `Content-Type: application/json`, a body-less one
/// included — a cross-site form cannot, so without a token no other site's page changes
/// anything.
pub async fn require_json_on_changes(request: Request, next: Next) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutating {
        if let Err(refused) = require_json(request.headers()) {
            return refused.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_allowed_hosts_pass() {
        let policy = HostPolicy {
            loopback_only: true,
            allowed: vec!["queue.internal".into()],
        };
        for host in [
            "localhost",
            "localhost:8000",
            "LOCALHOST:1",
            "app.localhost",
            "127.0.0.1:8000",
            "127.9.9.9",
            "[::1]:8000",
            "queue.internal:8000",
        ] {
            assert!(policy.allows(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8000",
            "localhost.attacker.example",
            "10.0.0.1",
            "[::2]:80",
            "",
        ] {
            assert!(!policy.allows(host), "{host}");
        }
        assert!(HostPolicy::default().allows("attacker.example"));
    }

    #[test]
    fn origins_compare_by_authority_with_default_ports() {
        assert_eq!(
            origin_authority("http://127.0.0.1:8000").as_deref(),
            Some("127.0.0.1:8000")
        );
        assert_eq!(
            origin_authority("https://x.example:443").as_deref(),
            Some("x.example")
        );
        assert_eq!(origin_authority("null"), None);
        assert_eq!(origin_authority("file:///etc"), None);
        assert_eq!(host_authority("X.example:80"), "x.example");
    }
}
