//! The request fingerprint behind idempotency: a hash of the canonical enqueue request, stored
//! beside the idempotency key, so that a second submission with the same key can be told to be
//! a replay (same request: return the existing job) or a conflict (different request: refuse).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::job::{Dependency, NewJob, Unique};
use crate::payload::Payload;

/// The request as hashed. Optional fields appear only when set, so that the fingerprints stored
/// before they existed still match.
#[derive(Serialize)]
struct Request<'a> {
    queue: &'a str,
    kind: &'a str,
    payload: &'a Payload,
    priority: i16,
    max_attempts: i32,
    run_at: Option<i64>,
    timeout_ms: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency_key: Option<&'a str>,
    // Resolved to job ids by then (a batch's indexes name the jobs it created or replayed), so
    // replaying the same batch matches.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    depends_on: &'a [Dependency],
    #[serde(skip_serializing_if = "Option::is_none")]
    unique: Option<&'a Unique>,
}

/// sha256 of the job's canonical form: every field that defines what runs (defaults already
/// applied, so an omitted `queue` and an explicit `"default"` are the same request), with object
/// keys sorted at every depth, so key order in the payload does not matter.
pub(crate) fn fingerprint(job: &NewJob) -> Vec<u8> {
    let request = Request {
        queue: &job.queue,
        kind: &job.kind,
        payload: &job.payload,
        priority: job.priority,
        max_attempts: job.max_attempts,
        run_at: job.run_at.map(|t| t.timestamp_micros()),
        timeout_ms: job.timeout_ms,
        concurrency_key: job.concurrency_key.as_deref(),
        depends_on: &job.depends_on,
        unique: job.unique.as_ref(),
    };
    Sha256::digest(canonical(&request).as_bytes()).to_vec()
}

/// The uniqueness key derived from what the job is (docs/http-api.md `unique_scope` without a
/// `unique_key`): `sha256:` and the hex digest of its kind, queue and payload in canonical form,
/// so the same arguments with object keys in another order give the same key.
pub(crate) fn derived_unique_key(job: &NewJob) -> String {
    #[derive(Serialize)]
    struct What<'a> {
        kind: &'a str,
        queue: &'a str,
        payload: &'a Payload,
    }
    let what = What {
        kind: &job.kind,
        queue: &job.queue,
        payload: &job.payload,
    };
    let digest = Sha256::digest(canonical(&what).as_bytes());
    let mut key = String::with_capacity(7 + 64);
    key.push_str("sha256:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// `value` as compact JSON with object keys sorted at every depth, numbers spelled as given.
fn canonical<T: Serialize>(value: &T) -> String {
    // Neither step can fail: the request types always serialise, and their text is JSON.
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    if write_canonical(&text, &mut out).is_err() {
        return text;
    }
    out
}

// Works on the text rather than on a `serde_json::Value`: a Value sorts keys only while
// serde_json's `preserve_order` feature is off and keeps a number's spelling only while
// `arbitrary_precision` is on, and any crate in the build can change either. A number's text is
// kept as written (as the fingerprints stored by releases that read payloads that way did).
fn write_canonical(text: &str, out: &mut String) -> Result<(), serde_json::Error> {
    let text = text.trim();
    match text.as_bytes().first() {
        Some(b'{') => {
            // Duplicate keys: the last one wins, as for every other reader of the payload.
            let map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(text)?;
            out.push('{');
            for (i, (key, value)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key)?);
                out.push(':');
                write_canonical(value.get(), out)?;
            }
            out.push('}');
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text)?;
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item.get(), out)?;
            }
            out.push(']');
        }
        Some(b'"') => {
            let string: String = serde_json::from_str(text)?;
            out.push_str(&serde_json::to_string(&string)?);
        }
        _ => out.push_str(text),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_fingerprint() {
        let a = Payload::from_json(r#"{"a":1,"b":{"x":[1,{"p":1,"q":2}],"y":2}}"#).unwrap();
        let b = Payload::from_json(r#"{"b":{"y":2,"x":[1,{"q":2,"p":1}]},"a":1}"#).unwrap();
        assert_eq!(
            fingerprint(&NewJob::new("k", a)),
            fingerprint(&NewJob::new("k", b))
        );
    }

    #[test]
    fn any_defining_field_changes_the_fingerprint() {
        let base = NewJob::new("k", json!({"n": 1}));
        let variants = [
            NewJob::new("other", json!({"n": 1})),
            NewJob::new("k", json!({"n": 2})),
            base.clone().with_queue("q2"),
            base.clone().with_priority(3),
            base.clone().with_max_attempts(2),
            base.clone().with_timeout_ms(10),
            base.clone().with_run_at(chrono::Utc::now()),
            base.clone().with_concurrency_key("c"),
        ];
        for variant in variants {
            assert_ne!(fingerprint(&base), fingerprint(&variant), "{variant:?}");
        }
    }

    #[test]
    fn a_job_without_a_concurrency_key_keeps_the_fingerprint_stored_before_keys_existed() {
        // The canonical form as written before `concurrency_key` existed: the hash stored with
        // every keyed job of an older release, which a replay must still match.
        let job = NewJob::new("k", json!({"n": 1}));
        let before = r#"{"kind":"k","max_attempts":5,"payload":{"n":1},"priority":0,"queue":"default","run_at":null,"timeout_ms":null}"#;
        assert_eq!(
            fingerprint(&job),
            Sha256::digest(before.as_bytes()).to_vec()
        );
    }

    #[test]
    fn numbers_and_strings_are_canonical_as_written() {
        let mut out = String::new();
        write_canonical(r#"{"z":"\u0041","a":[1.50, 1e400, -0]}"#, &mut out).unwrap();
        assert_eq!(out, r#"{"a":[1.50,1e400,-0],"z":"A"}"#);
    }

    #[test]
    fn the_key_itself_is_not_part_of_the_request() {
        let base = NewJob::new("k", json!({}));
        assert_eq!(
            fingerprint(&base),
            fingerprint(&base.clone().with_idempotency_key("x"))
        );
    }
}
