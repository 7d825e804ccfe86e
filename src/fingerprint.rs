//! The request fingerprint behind idempotency: a hash of the canonical enqueue request, stored
//! beside the idempotency key, so that a second submission with the same key can be told to be
//! a replay (same request: return the existing job) or a conflict (different request: refuse).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::job::NewJob;

/// sha256 of the job's canonical form: every field that defines what runs (defaults already
/// applied, so an omitted `queue` and an explicit `"default"` are the same request), with object
/// keys sorted at every depth, so key order in the payload does not matter.
pub(crate) fn fingerprint(job: &NewJob) -> Vec<u8> {
    let mut canonical = serde_json::json!({
        "queue": job.queue,
        "kind": job.kind,
        "payload": job.payload,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at.map(|t| t.timestamp_micros()),
        "timeout_ms": job.timeout_ms,
    });
    // Only when set, so that the fingerprints stored before keys existed still match.
    if let Some(key) = &job.concurrency_key {
        canonical["concurrency_key"] = serde_json::Value::String(key.clone());
    }
    // Resolved to job ids by then (a batch's indexes name the jobs it created or replayed), so
    // replaying the same batch matches.
    if !job.depends_on.is_empty() {
        canonical["depends_on"] = serde_json::json!(job.depends_on);
    }
    if let Some(unique) = &job.unique {
        canonical["unique"] = serde_json::json!(unique);
    }
    let mut text = String::new();
    write_canonical(&canonical, &mut text);
    Sha256::digest(text.as_bytes()).to_vec()
}

/// The uniqueness key derived from what the job is (SPEC §5 `unique_scope` without a
/// `unique_key`): `sha256:` and the hex digest of its kind, queue and payload in canonical form,
/// so the same arguments with object keys in another order give the same key.
pub(crate) fn derived_unique_key(job: &NewJob) -> String {
    let canonical = serde_json::json!({
        "kind": job.kind,
        "queue": job.queue,
        "payload": job.payload,
    });
    let mut text = String::new();
    write_canonical(&canonical, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    let mut key = String::with_capacity(7 + 64);
    key.push_str("sha256:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

// serde_json sorts object keys only while its `preserve_order` feature is off, and any crate in
// the build can turn that on; so sort explicitly rather than rely on it.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_fingerprint() {
        let a: Value =
            serde_json::from_str(r#"{"a":1,"b":{"x":[1,{"p":1,"q":2}],"y":2}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"b":{"y":2,"x":[1,{"q":2,"p":1}]},"a":1}"#).unwrap();
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
    fn the_key_itself_is_not_part_of_the_request() {
        let base = NewJob::new("k", json!({}));
        assert_eq!(
            fingerprint(&base),
            fingerprint(&base.clone().with_idempotency_key("x"))
        );
    }
}
