//! The library keeps payloads exact without serde_json's `preserve_order` and
//! `arbitrary_precision` (a `Payload` is the JSON text), so no crate of the workspace turns them
//! on: Cargo would turn them on in every user's build too, changing how the user's own `Value`s
//! order keys and read numbers. This test is built with the workspace's unified features, so it
//! fails if any member turns either on.

#[test]
fn values_are_as_serde_json_makes_them_by_default_and_payloads_stay_exact() {
    let value: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
    assert_eq!(
        value.to_string(),
        r#"{"a":2,"b":1}"#,
        "preserve_order is on"
    );
    let number: serde_json::Value = serde_json::from_str("1.50").unwrap();
    assert_eq!(number.to_string(), "1.5", "arbitrary_precision is on");
    let payload =
        faultline::Payload::from_json(r#"{"b":1.50,"a":123456789012345678901234567890}"#).unwrap();
    assert_eq!(
        payload.get(),
        r#"{"b":1.50,"a":123456789012345678901234567890}"#
    );
}
