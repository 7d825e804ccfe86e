//! Headers a `webhook` job may not set: the ones that frame the request or belong to one hop.
//!
//! The HTTP client computes these itself. A payload that sets `Content-Length: 2` would have its
//! body cut to two bytes; `Transfer-Encoding` or `Connection: upgrade` can hang the request
//! until its timeout and have it retried; `Host` sends the request to one host under another
//! host's name. They are refused at enqueue (naming the header), and a job that carries one
//! anyway (stored before this rule) fails permanently at delivery.

/// The refused header names, lowercase.
pub(crate) const REFUSED: [&str; 11] = [
    "connection",
    "content-length",
    "expect",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The name of the first refused header among `names`, as given.
pub(crate) fn refused<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .find(|name| REFUSED.contains(&name.to_ascii_lowercase().as_str()))
}

/// What is wrong with a `webhook` job's payload headers, as `(field, message)`: the field names
/// the header. Other payload problems (a missing URL, a bad value) stay the handler's, reported
/// as a permanent failure when it runs, as before.
pub(crate) fn payload_problem(payload: &serde_json::Value) -> Option<(String, String)> {
    let headers = payload.get("headers")?.as_object()?;
    let name = refused(headers.keys().map(String::as_str))?;
    Some((
        format!("payload.headers.{name}"),
        format!(
            "the webhook request's {name:?} header is set by the HTTP client (framing and \
             hop-by-hop headers cannot be set: {})",
            REFUSED.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_framing_and_hop_headers_in_any_case() {
        for name in [
            "Content-Length",
            "HOST",
            "transfer-encoding",
            "Connection",
            "TE",
        ] {
            let payload = serde_json::json!({"url": "https://x.example", "headers": {name: "1"}});
            let (field, _) = payload_problem(&payload).expect(name);
            assert_eq!(field, format!("payload.headers.{name}"));
        }
        let fine = serde_json::json!({"url": "https://x.example", "headers": {"X-Sig": "a"}});
        assert!(payload_problem(&fine).is_none());
        assert!(payload_problem(&serde_json::json!("text")).is_none());
    }
}
