//! What the server enforces that the derived OpenAPI document cannot say by itself, written
//! into the document (`GET /openapi.json`) so that it is exactly as strict as the server:
//! names and labels as patterns and lengths, numeric ranges, formats, the uniqueness fields'
//! `if`/`then`, a batch's dependency indexes, the time zones chrono-tz reads, and every status a
//! route can answer (415 for a change without `Content-Type: application/json`, 400 for a
//! malformed body or id). Generated clients inherit the document, and Schemathesis
//! (`scripts/check-openapi`) checks it against the server.
//!
//! The rules come from the same constants the validation uses ([`crate::names`],
//! [`crate::job::MAX_NAME_LEN`]), so a change there changes the document with it.

use serde_json::{json, Map, Value};

use crate::job::MAX_NAME_LEN;
use crate::names::NAME_PUNCTUATION;

/// Characters a free-text label may not hold (`char::is_control`).
const CONTROL_FREE: &str = r"[^\x00-\x1F\x7F-\x9F]";
/// A character that is neither a control character nor whitespace (`char::is_whitespace`).
const VISIBLE: &str = r"[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";
/// Whitespace as Rust's `char::is_whitespace` has it.
const WHITESPACE: &str =
    r"[\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";
/// `run_at` within years 1 to 9999 once in UTC (what a `timestamptz` and chrono both take).
const RUN_AT: &str = r"^(?!0000-)(?!0001-01-01[^+]*\+(?!00:00))(?!9999-12-31[^-]*-(?!00:00))";
const I32_MAX: i64 = i32::MAX as i64;

/// A queue or kind name's pattern.
fn name_pattern() -> String {
    let punctuation: String = NAME_PUNCTUATION.chars().filter(|c| *c != '-').collect();
    // `-` last, so that it is not a range.
    format!("^[A-Za-z0-9{}-]+$", regex_escape(&punctuation))
}

fn regex_escape(chars: &str) -> String {
    chars
        .chars()
        .map(|c| {
            if "\\^]".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A free-text label's pattern (idempotency key, concurrency key, worker id, …): no control
/// character, not blank.
fn label_pattern() -> String {
    format!("^{CONTROL_FREE}*{VISIBLE}{CONTROL_FREE}*$")
}

fn name(schema: &mut Value, max: usize) {
    set(
        schema,
        json!({"minLength": 1, "maxLength": max, "pattern": name_pattern()}),
    );
}

fn label(schema: &mut Value) {
    set(
        schema,
        json!({"minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": label_pattern()}),
    );
}

fn range(schema: &mut Value, min: i64, max: i64) {
    set(schema, json!({"minimum": min, "maximum": max}));
}

/// Merge `fields` into the object `schema` (nothing when it is not one).
fn set(schema: &mut Value, fields: Value) {
    if let (Some(schema), Value::Object(fields)) = (schema.as_object_mut(), fields) {
        schema.extend(fields);
    }
}

/// `doc`'s `path` (JSON pointer), or a dummy to write into when it is missing: a rule for a
/// schema that went away must not panic the server.
fn at<'a>(doc: &'a mut Value, path: &str, dummy: &'a mut Value) -> &'a mut Value {
    match doc.pointer_mut(path) {
        Some(found) => found,
        None => {
            debug_assert!(false, "openapi_rules: no {path} in the document");
            dummy
        }
    }
}

/// Apply every rule to the derived document `doc`.
pub fn apply(doc: &mut Value) {
    request_bodies(doc);
    worker_protocol(doc);
    settings(doc);
    parameters(doc);
    statuses(doc);
}

/// The enqueue request (and a batch's version of it), the listing's filters.
fn request_bodies(doc: &mut Value) {
    enqueue_request(doc);
    batch_job(doc);
    filter_params(doc);
}

/// The enqueue request's fields.
fn enqueue_request(doc: &mut Value) {
    let mut dummy = Value::Null;
    let e = "/components/schemas/EnqueueRequest/properties";
    for field in ["kind", "queue"] {
        name(at(doc, &format!("{e}/{field}"), &mut dummy), MAX_NAME_LEN);
    }
    range(at(doc, &format!("{e}/priority"), &mut dummy), -32768, 32767);
    range(
        at(doc, &format!("{e}/max_attempts"), &mut dummy),
        1,
        I32_MAX,
    );
    range(at(doc, &format!("{e}/timeout_ms"), &mut dummy), 1, I32_MAX);
    for field in ["concurrency_key", "unique_key"] {
        label(at(doc, &format!("{e}/{field}"), &mut dummy));
    }
    label(at(doc, &format!("{e}/idempotency_key"), &mut dummy));
    set(
        at(doc, &format!("{e}/idempotency_key"), &mut dummy),
        json!({"pattern": format!("^(?!schedule:){}", &label_pattern()[1..]),
               "description": "At most one job exists per key (also as header `Idempotency-Key`; both given, they must be equal): 1–255 bytes without control characters; keys starting with `schedule:` are the scheduler's."}),
    );
    range(
        at(doc, &format!("{e}/unique_period_ms"), &mut dummy),
        1,
        31_622_400_000,
    );
    set(
        at(doc, &format!("{e}/run_at"), &mut dummy),
        json!({"pattern": RUN_AT}),
    );
    // A period needs the scope `period`, and the scope `period` needs a period.
    let pairs = json!([
        {"if": {"required": ["unique_period_ms"], "properties": {"unique_period_ms": {"type": "integer"}}},
         "then": {"required": ["unique_scope"], "properties": {"unique_scope": {"const": "period"}}}},
        {"if": {"required": ["unique_scope"], "properties": {"unique_scope": {"const": "period"}}},
         "then": {"required": ["unique_period_ms"], "properties": {"unique_period_ms": {"type": "integer"}}}}
    ]);
    set(
        at(doc, "/components/schemas/EnqueueRequest", &mut dummy),
        json!({"allOf": pairs}),
    );
}

/// A batch's job: the enqueue request whose dependencies may also be indexes; a single
/// enqueue's are job ids.
fn batch_job(doc: &mut Value) {
    let mut dummy = Value::Null;
    let e = "/components/schemas/EnqueueRequest/properties";
    let mut batch = doc
        .pointer("/components/schemas/EnqueueRequest")
        .cloned()
        .unwrap_or_default();
    set(
        at(doc, &format!("{e}/depends_on"), &mut dummy),
        json!({"items": {"$ref": "#/components/schemas/JobId"},
               "description": "Jobs that must succeed first (at most 100), by id; each must exist (422). The job waits (`waiting`) until every one has succeeded and is cancelled as soon as one fails or is cancelled."}),
    );
    set(
        at(&mut batch, "/properties/depends_on", &mut dummy),
        json!({"items": {"$ref": "#/components/schemas/DependencyRef"}}),
    );
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("BatchJob".into(), batch);
    }
    set(
        at(doc, "/components/schemas/DependencyRef/oneOf/1", &mut dummy),
        json!({"maximum": 998}),
    );
    set(
        at(
            doc,
            "/components/schemas/BatchRequest/properties/jobs",
            &mut dummy,
        ),
        json!({"minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/BatchJob"}}),
    );
}

/// The filters of a listing and of a bulk action.
fn filter_params(doc: &mut Value) {
    let mut dummy = Value::Null;
    let f = "/components/schemas/FilterParams/properties";
    set(
        at(doc, &format!("{f}/state"), &mut dummy),
        json!({"type": Value::Null, "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/JobState"}]}),
    );
    strip_type(at(doc, &format!("{f}/state"), &mut dummy));
    name(at(doc, &format!("{f}/queue"), &mut dummy), MAX_NAME_LEN);
    name(at(doc, &format!("{f}/kind"), &mut dummy), MAX_NAME_LEN);
    label(at(doc, &format!("{f}/key"), &mut dummy));
    for field in ["created_after", "created_before"] {
        set(
            at(doc, &format!("{f}/{field}"), &mut dummy),
            json!({"format": "date-time"}),
        );
    }
}

/// Remove a `"type": null` left by [`set`] (a schema that is a `oneOf`).
fn strip_type(schema: &mut Value) {
    if let Some(object) = schema.as_object_mut() {
        if object.get("type") == Some(&Value::Null) {
            object.remove("type");
        }
    }
}

/// Claims and reports.
fn worker_protocol(doc: &mut Value) {
    claims(doc);
    reports(doc);
}

/// A claim's fields.
fn claims(doc: &mut Value) {
    let mut dummy = Value::Null;
    let c = "/components/schemas/ClaimRequest/properties";
    label(at(doc, &format!("{c}/worker_id"), &mut dummy));
    set(
        at(doc, &format!("{c}/queues"), &mut dummy),
        json!({"minItems": 1, "maxItems": 100}),
    );
    name(
        at(doc, &format!("{c}/queues/items"), &mut dummy),
        MAX_NAME_LEN,
    );
    range(at(doc, &format!("{c}/max"), &mut dummy), 1, 1000);
    range(at(doc, &format!("{c}/wait_ms"), &mut dummy), 0, 60_000);
    range(
        at(doc, &format!("{c}/lease_ttl_ms"), &mut dummy),
        1000,
        3_600_000,
    );
}

/// The reports' fields, and the durable routes'.
fn reports(doc: &mut Value) {
    let mut dummy = Value::Null;
    let beats = "/components/schemas/HeartbeatBatchRequest/properties";
    set(
        at(doc, &format!("{beats}/jobs"), &mut dummy),
        json!({"minItems": 1, "maxItems": 1000}),
    );
    range(
        at(doc, &format!("{beats}/lease_ttl_ms"), &mut dummy),
        1000,
        3_600_000,
    );
    range(
        at(
            doc,
            "/components/schemas/HeartbeatRequest/properties/lease_ttl_ms",
            &mut dummy,
        ),
        1000,
        3_600_000,
    );
    let fail = "/components/schemas/FailRequest/properties";
    set(
        at(doc, &format!("{fail}/error"), &mut dummy),
        json!({"pattern": VISIBLE}),
    );
    range(
        at(doc, &format!("{fail}/retry_after_ms"), &mut dummy),
        0,
        31_536_000_000,
    );
    set(
        at(
            doc,
            "/components/schemas/CompleteBatchRequest/properties/jobs",
            &mut dummy,
        ),
        json!({"minItems": 1, "maxItems": 1000}),
    );
    let wait = "/components/schemas/WaitRequest/properties";
    label(at(doc, &format!("{wait}/signal"), &mut dummy));
    range(
        at(doc, &format!("{wait}/timeout_ms"), &mut dummy),
        0,
        3_153_600_000_000,
    );
    range(
        at(
            doc,
            "/components/schemas/SleepRequest/properties/seq",
            &mut dummy,
        ),
        1,
        I32_MAX,
    );
}

/// Queue settings and schedules.
fn settings(doc: &mut Value) {
    let mut dummy = Value::Null;
    let q = "/components/schemas/QueuePatch/properties";
    for field in ["concurrency_limit", "key_concurrency"] {
        range(at(doc, &format!("{q}/{field}"), &mut dummy), 1, 1_000_000);
    }
    let r = "/components/schemas/RateLimit/properties";
    range(at(doc, &format!("{r}/count"), &mut dummy), 1, 1_000_000);
    range(
        at(doc, &format!("{r}/period_ms"), &mut dummy),
        1,
        86_400_000,
    );
    let s = "/components/schemas/ScheduleSpec/properties";
    for field in ["kind", "queue"] {
        name(at(doc, &format!("{s}/{field}"), &mut dummy), MAX_NAME_LEN);
    }
    range(at(doc, &format!("{s}/priority"), &mut dummy), -32768, 32767);
    range(
        at(doc, &format!("{s}/max_attempts"), &mut dummy),
        1,
        I32_MAX,
    );
    set(
        at(doc, &format!("{s}/cron"), &mut dummy),
        json!({"minLength": 1, "maxLength": 1024}),
    );
    let mut zones: Vec<Value> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| Value::from(tz.name()))
        .collect();
    zones.push(Value::Null);
    set(
        at(doc, &format!("{s}/timezone"), &mut dummy),
        json!({"enum": zones}),
    );
}

/// Path and query parameters: ids are UUIDs, names are names, the listing's filters.
fn parameters(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let Some(params) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for param in params {
                let (place, which) = (param["in"].clone(), param["name"].clone());
                let schema = &mut param["schema"];
                match (place.as_str(), which.as_str()) {
                    (Some("path"), Some("id")) => {
                        *schema = json!({"$ref": "#/components/schemas/JobId"})
                    }
                    (Some("path"), Some("name")) if path.starts_with("/v1/schedules") => {
                        name(schema, 200)
                    }
                    (Some("path"), Some("name")) if path.starts_with("/v1/queues") => {
                        name(schema, MAX_NAME_LEN)
                    }
                    (Some("path"), Some("name")) => label(schema),
                    (Some("header"), Some("Idempotency-Key")) => set(
                        schema,
                        json!({"minLength": 1, "maxLength": MAX_NAME_LEN,
                               "pattern": r"^(?!schedule:)[\x20-\x7E]*[\x21-\x7E][\x20-\x7E]*$"}),
                    ),
                    (Some("query"), Some(query)) => query_parameter(path, query, schema),
                    _ => {}
                }
            }
        }
    }
}

fn query_parameter(path: &str, query: &str, schema: &mut Value) {
    match (path, query) {
        ("/v1/jobs", "state") => *schema = json!({"$ref": "#/components/schemas/JobState"}),
        ("/v1/jobs", "queue" | "kind") => name(schema, MAX_NAME_LEN),
        ("/v1/jobs", "key") => label(schema),
        ("/v1/jobs", "created_after" | "created_before") => {
            set(schema, json!({"format": "date-time"}))
        }
        ("/v1/jobs", "limit") => range(schema, 1, 1000),
        ("/v1/jobs", "cursor") => *schema = json!({"$ref": "#/components/schemas/JobId"}),
        ("/v1/jobs", "fields") => {
            let field = "(?:payload|result|errors|all)";
            let pattern = format!(
                "^{WHITESPACE}*(?:{field}{WHITESPACE}*)?(?:,{WHITESPACE}*(?:{field}{WHITESPACE}*)?)*$"
            );
            set(schema, json!({"pattern": pattern}));
        }
        ("/v1/throughput", "minutes") => range(schema, 1, 1440),
        _ => {}
    }
}

/// The statuses every route can answer beyond its own: 415 for a change without JSON (and
/// the body that says so, for the body-less ones), 400 for a malformed body or a bad id, 413
/// for a body over the limit.
fn statuses(doc: &mut Value) {
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    };
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            let responses = operation
                .entry("responses")
                .or_insert_with(|| Value::Object(Map::new()));
            let Some(responses) = responses.as_object_mut() else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description));
            };
            if path.contains("{id}") {
                add("400", "not a UUID");
            }
            if matches!(method.as_str(), "post" | "put" | "patch" | "delete") {
                add("415", "Content-Type is not application/json");
                add("400", "malformed JSON");
                add("413", "body over the limit");
            }
            if !operation.contains_key("requestBody")
                && matches!(method.as_str(), "post" | "put" | "patch" | "delete")
            {
                operation.insert(
                    "requestBody".into(),
                    json!({"required": true,
                           "description": "Ignored; the request must say `Content-Type: application/json` (a cross-site form cannot): send `{}`",
                           "content": {"application/json": {"schema": {}}}}),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_pattern_is_the_validations() {
        assert_eq!(name_pattern(), "^[A-Za-z0-9_.:/@+-]+$");
    }

    #[test]
    fn every_rule_finds_its_place_in_the_derived_document() {
        use utoipa::OpenApi;
        let mut doc = serde_json::to_value(super::super::ApiDoc::openapi()).unwrap();
        // `at` asserts in debug builds that each path exists.
        apply(&mut doc);
        assert!(doc.pointer("/components/schemas/BatchJob").is_some());
        assert_eq!(
            doc.pointer("/components/schemas/ClaimRequest/properties/max/maximum"),
            Some(&json!(1000))
        );
    }
}
