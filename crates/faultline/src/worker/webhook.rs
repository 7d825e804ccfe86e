//! The `webhook` kind: an HTTP request whose 2xx answer is success.
//!
//! Requests to loopback, private, link-local (cloud metadata at 169.254.169.254 included),
//! shared, multicast and other special-purpose addresses are refused unless allowed, because a
//! queue that accepts URLs from API clients must not become a proxy into the network it runs
//! in. The check applies to the *resolved* address, not only the URL's host: names are resolved
//! by a resolver that drops refused addresses, so the connection goes only to an address that
//! passed, and a name that resolves to 127.0.0.1 is refused like the literal. Redirects are not
//! followed (a redirect could lead to a refused address); a 3xx is a failure.
//!
//! Proxy variables in the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) are ignored:
//! through a proxy, host names would be resolved by the proxy, past the guard. A proxy is used
//! only when configured explicitly (`--webhook-proxy`), and then the target's name is resolved
//! and checked here before the request is handed to the proxy.
//!
//! The receiver's answer is outside input: at most [`MAX_ANSWER_BYTES`] of an error answer and
//! [`MAX_RESULT_BODY_BYTES`] of a successful one are read (a receiver that answers with a
//! gigabyte costs kilobytes), and what is kept is made storable (invalid UTF-8 and NUL
//! replaced), so a hostile answer can neither exhaust the worker nor make the database refuse
//! the report. A success keeps `{"status", "body", "truncated"}` as the job's result.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;

use super::handler::{Handler, JobContext, JobError, JobResult};

/// Settings of the `webhook` kind.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Allow loopback, private and link-local targets (tests, trusted internal hooks).
    pub allow_private: bool,
    /// Request timeout when the payload sets none (it bounds reading the answer too).
    pub timeout: Duration,
    /// Send every webhook through this proxy (`http://host:port`); none unless set, whatever
    /// the environment says.
    pub proxy: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private: false,
            timeout: Duration::from_secs(10),
            proxy: None,
        }
    }
}

/// Most characters of a receiver's error answer kept in the job's error.
pub const MAX_ANSWER_CHARS: usize = 200;
/// Most bytes of a receiver's answer ever read (four per kept character, UTF-8's widest).
pub const MAX_ANSWER_BYTES: usize = MAX_ANSWER_CHARS * 4;

/// Most bytes of a successful answer kept in the job's result (docs/library.md).
pub const MAX_RESULT_BODY_BYTES: usize = 4096;

/// What a delivered webhook keeps as the job's result.
#[derive(Debug, serde::Serialize)]
pub struct WebhookResult {
    /// The receiver's HTTP status.
    pub status: u16,
    /// The first [`MAX_RESULT_BODY_BYTES`] of its answer, as storable text.
    pub body: String,
    /// Whether the answer was longer than what is kept.
    pub truncated: bool,
}

/// `webhook` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPayload {
    /// `http` or `https` URL.
    pub url: String,
    /// HTTP method; `POST` unless set.
    #[serde(default)]
    pub method: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Body: a string is sent as is, any other JSON value as `application/json`.
    #[serde(default)]
    pub body: Option<Box<serde_json::value::RawValue>>,
    /// Per-request timeout in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The `webhook` handler.
pub struct Webhook {
    client: reqwest::Client,
    config: WebhookConfig,
}

/// Returned by [`Webhook::new`] for a proxy URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid webhook proxy {url:?}: {reason}")]
pub struct ProxyError {
    /// The URL given.
    pub url: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl Webhook {
    /// A handler with its own HTTP client.
    ///
    /// # Errors
    /// [`ProxyError`] when `config.proxy` is not a usable proxy URL.
    pub fn new(config: WebhookConfig) -> Result<Self, ProxyError> {
        // `no_proxy` first: reqwest reads the proxy variables from the environment otherwise.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: config.allow_private,
            }))
            .user_agent(concat!("faultline/", env!("CARGO_PKG_VERSION")));
        if let Some(url) = &config.proxy {
            let invalid = |reason: String| ProxyError {
                url: url.clone(),
                reason,
            };
            let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(invalid(
                    "expected http://host:port or https://host:port".into(),
                ));
            }
            let proxy = reqwest::Proxy::all(url).map_err(|e| invalid(error_chain(&e)))?;
            builder = builder.proxy(proxy);
        }
        let client = builder.build().map_err(|e| ProxyError {
            url: config.proxy.clone().unwrap_or_default(),
            reason: error_chain(&e),
        })?;
        Ok(Webhook { client, config })
    }

    /// Through a proxy our resolver never sees the target's name, so resolve and check it here.
    async fn check_before_proxy(&self, host: &str, port: u16) -> Result<(), JobError> {
        if self.config.proxy.is_none() || self.config.allow_private {
            return Ok(());
        }
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| JobError::retryable(format!("cannot resolve webhook host {host:?}: {e}")))?
            .collect();
        match resolved.iter().find(|a| is_refused(a.ip())) {
            Some(addr) => Err(refused(addr.ip())),
            None if resolved.is_empty() => Err(JobError::retryable(format!(
                "webhook host {host:?} resolved to no address"
            ))),
            None => Ok(()),
        }
    }

    /// The payload's URL, once it is an `http(s)` URL with a host whose literal address (or,
    /// through a proxy, resolved name) is not refused.
    async fn checked_url(&self, hook: &WebhookPayload) -> Result<reqwest::Url, JobError> {
        let url = reqwest::Url::parse(&hook.url)
            .map_err(|e| JobError::permanent(format!("invalid webhook url {:?}: {e}", hook.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(JobError::permanent(format!(
                "webhook url must be http or https, got {:?}",
                url.scheme()
            )));
        }
        // Literal addresses never reach the resolver, so they are checked here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(JobError::permanent("webhook url has no host")),
        };
        if let Some(ip) = literal {
            if !self.config.allow_private && is_refused(ip) {
                return Err(refused(ip));
            }
        }
        if let Some(url::Host::Domain(host)) = url.host() {
            self.check_before_proxy(host, url.port_or_known_default().unwrap_or(80))
                .await?;
        }
        Ok(url)
    }

    /// The request to send for `hook` to `url`: method, timeout, headers and body, every part
    /// from the payload checked (a bad one is a permanent error naming it).
    fn request(
        &self,
        ctx: &JobContext,
        hook: &WebhookPayload,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, JobError> {
        let headers = request_headers(ctx, &hook.headers)?;
        let method = hook.method.as_deref().unwrap_or("POST");
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| JobError::permanent(format!("invalid webhook method {method:?}")))?;
        let timeout = hook
            .timeout_ms
            .map_or(self.config.timeout, Duration::from_millis);
        let typed = headers.contains_key(reqwest::header::CONTENT_TYPE);
        let request = self
            .client
            .request(method, url)
            .timeout(timeout)
            .headers(headers);
        // The body's text as the producer wrote it (key order, number spelling), not re-encoded.
        Ok(match hook.body.as_deref().map(|raw| raw.get().trim()) {
            None | Some("null") => request,
            Some(text) if text.starts_with('"') => {
                let text: String = serde_json::from_str(text)
                    .map_err(|e| JobError::permanent(format!("invalid webhook body: {e}")))?;
                request.body(text)
            }
            Some(json) if typed => request.body(json.to_owned()),
            Some(json) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json.to_owned()),
        })
    }
}

impl Handler for Webhook {
    type Payload = WebhookPayload;
    type Output = WebhookResult;

    async fn handle(&self, ctx: JobContext, hook: WebhookPayload) -> JobResult<WebhookResult> {
        let url = self.checked_url(&hook).await?;
        let request = self.request(&ctx, &hook, url)?;
        let response = tokio::select! {
            response = request.send() => response,
            _ = ctx.cancelled() => return Err(JobError::retryable("cancelled during delivery")),
        };
        let response = response.map_err(|e| describe_send_error(&e))?;
        let status = response.status();
        if status.is_success() {
            let (body, truncated) = read_answer(response, &ctx, MAX_RESULT_BODY_BYTES).await;
            return Ok(WebhookResult {
                status: status.as_u16(),
                body,
                truncated,
            });
        }
        let (answer, _) = read_answer(response, &ctx, MAX_ANSWER_BYTES).await;
        let snippet: String = answer.chars().take(MAX_ANSWER_CHARS).collect();
        let message = format!("webhook answered {status}: {snippet}");
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(JobError::retryable(message))
        } else {
            Err(JobError::permanent(message))
        }
    }
}

/// The request's headers: the payload's (each checked, a bad one a permanent error naming it),
/// then the job's own, which replace any the payload set.
fn request_headers(
    ctx: &JobContext,
    payload_headers: &HashMap<String, String>,
) -> Result<reqwest::header::HeaderMap, JobError> {
    // Headers from the payload are checked here, each named: a bad one is the payload's
    // fault, permanent, not a "builder error" retried four times.
    if let Some(name) = crate::webhook_headers::refused(payload_headers.keys().map(String::as_str))
    {
        return Err(JobError::permanent(format!(
            "webhook header {name:?} cannot be set: the HTTP client frames the request"
        )));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in payload_headers {
        let header = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| JobError::permanent(format!("invalid webhook header name {name:?}")))?;
        let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            JobError::permanent(format!(
                "invalid value for webhook header {name:?}: header values are visible \
                 ASCII, spaces and tabs"
            ))
        })?;
        headers.append(header, value);
    }
    // The job's own headers (docs/library.md) last, replacing any the payload set: a receiver may
    // trust them, the fencing token above all (it refuses a write with a smaller one).
    for (name, value) in [
        ("faultline-job-id", ctx.job_id.to_string()),
        ("faultline-attempt", ctx.attempt.to_string()),
        ("faultline-fencing-token", ctx.lease_token.to_string()),
        ("idempotency-key", ctx.job_id.to_string()),
    ] {
        let value = reqwest::header::HeaderValue::from_str(&value)
            .expect("ids and numbers are header-safe");
        headers.insert(reqwest::header::HeaderName::from_static(name), value);
    }
    Ok(headers)
}

/// At most `max` bytes of the answer's body, as storable text, and whether there was more;
/// whatever comes after is never read (the connection is dropped). A body that stalls is
/// bounded by the request timeout.
async fn read_answer(
    mut response: reqwest::Response,
    ctx: &JobContext,
    max: usize,
) -> (String, bool) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut truncated = false;
    // Up to `max` bytes, then one chunk more to tell whether there was more (bounded: a chunk
    // is what one read returns).
    while !truncated {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = ctx.cancelled() => break,
        };
        match chunk {
            Ok(Some(chunk)) => {
                let room = max - bytes.len();
                truncated = chunk.len() > room;
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // The end, or a body cut off or timed out: keep what arrived.
            Ok(None) | Err(_) => break,
        }
    }
    (crate::text::from_remote(&bytes, max), truncated)
}

/// `error` and every cause below it, joined by ": " (reqwest's own message names none).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn describe_send_error(error: &reqwest::Error) -> JobError {
    // A refusal by the resolver is permanent: retrying resolves to the same addresses.
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<Refused>() {
            return JobError::permanent(refusal.to_string());
        }
        source = e.source();
    }
    let detail = error_chain(error);
    if error.is_builder() {
        JobError::permanent(format!("webhook request cannot be built: {detail}"))
    } else if error.is_timeout() {
        JobError::retryable(format!("webhook timed out: {detail}"))
    } else {
        JobError::retryable(format!("webhook delivery failed: {detail}"))
    }
}

fn refused(ip: IpAddr) -> JobError {
    JobError::permanent(Refused(ip).to_string())
}

#[derive(Debug)]
struct Refused(IpAddr);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "webhook target address {} is loopback, private, link-local or otherwise reserved; \
             refused (start the worker with --webhook-allow-private to allow it)",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

/// Resolves with the system resolver, then drops refused addresses; a name with nothing left
/// fails with [`Refused`].
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| allow_private || !is_refused(addr.ip()))
                .collect();
            match (allowed.is_empty(), resolved.first()) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as Addrs),
                (true, Some(first)) => Err(Box::new(Refused(first.ip())) as _),
                (true, None) => Err(format!("{host} resolved to no address").into()),
            }
        })
    }
}

/// Whether `ip` is an address a webhook must not reach by default.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_refused_v4(v4);
            }
            is_refused_v6(v6)
        }
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, cloud metadata included
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 metadata included)
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 (may map to private v4)
        || first == 0x2002 // 6to4: embeds an IPv4 address (possibly private) in bits 16..48
        || ip.segments()[..6] == [0; 6] // IPv4-compatible ::/96 (deprecated): ::a.b.c.d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_and_special_addresses() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:808:808::1",
        ] {
            assert!(is_refused(ip.parse().unwrap()), "{ip} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert!(!is_refused(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }
}
