//! [`Payload`]: JSON kept as the exact text it was given in.
//!
//! A job's payload (and a handler's result) goes from the producer to the handler byte for byte:
//! key order, number spelling (`1.50`, `1e400`, 30-digit integers) and duplicate keys included.
//! A `serde_json::Value` cannot promise that unless serde_json's `preserve_order` and
//! `arbitrary_precision` features are on, and turning those on in a library turns them on in
//! every crate of the application that uses it (Cargo unifies features), which changes how the
//! application's own `Value`s order keys and read numbers. So the text is kept instead
//! ([`serde_json::value::RawValue`]), and parsed only where a value is wanted.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{Decode, Postgres, Type};

/// A JSON document as the exact text it was given in (always valid JSON), less the whitespace
/// between tokens: keys keep their order, numbers their spelling, strings their escapes.
///
/// Build one from a `serde_json::Value` (`json!({...}).into()`), from any `Serialize` type
/// ([`Payload::serialize`]) or from JSON text ([`Payload::from_json`]); read it back as text
/// ([`Payload::get`], `Display`), as a type ([`Payload::deserialize`]) or as a
/// `serde_json::Value` ([`Payload::to_value`]). Two payloads are equal when their texts are; a
/// payload equals a `Value` when its text parses to that value.
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl<'de> Deserialize<'de> for Payload {
    /// Only from JSON (serde_json's deserializer): the text is taken as written. What a JSON
    /// reader would refuse in it (a lone surrogate escape, nesting past 128) is refused when
    /// the payload is stored, whatever way it was made; the API refuses such a body earlier,
    /// whole, as malformed.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Payload::compact(Box::<RawValue>::deserialize(d)?))
    }
}

impl Payload {
    /// The payload of JSON text `text`, kept exactly as given.
    ///
    /// # Errors
    /// The parser's error when `text` is not one JSON document, or holds what no JSON reader
    /// takes (a lone surrogate escape, nesting deeper than 128 levels).
    pub fn from_json(text: impl Into<String>) -> Result<Payload, serde_json::Error> {
        let payload = RawValue::from_string(text.into()).map(Payload::compact)?;
        payload.check().map_err(serde::de::Error::custom)?;
        Ok(payload)
    }

    /// `raw` without the whitespace between its tokens (it is kept unchanged when it has none,
    /// the common case: what serde_json and most clients write).
    fn compact(raw: Box<RawValue>) -> Payload {
        match minified(raw.get()) {
            Some(text) => Payload(RawValue::from_string(text).unwrap_or(raw)),
            None => Payload(raw),
        }
    }

    /// Check what a `RawValue` lets through but no JSON reader should take: a `\u` escape
    /// that is half of a surrogate pair (not a character), and nesting deeper than
    /// serde_json reads (128 levels).
    ///
    /// # Errors
    /// The problem, and where it is.
    pub(crate) fn check(&self) -> Result<(), String> {
        problem(self.get()).map_or(Ok(()), Err)
    }

    /// `value` serialised as JSON (serde_json's compact form).
    ///
    /// # Errors
    /// serde_json's error when `value` cannot be written as JSON (a map with non-string keys, a
    /// `Serialize` implementation that fails).
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Payload, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Payload)
    }

    /// The JSON `null`.
    pub fn null() -> Payload {
        Payload(RawValue::NULL.to_owned())
    }

    /// The empty object `{}`.
    pub fn empty_object() -> Payload {
        Payload::from(serde_json::Value::Object(Default::default()))
    }

    /// The exact JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The payload read as `T`.
    ///
    /// # Errors
    /// serde_json's error (naming the line and column) when the JSON does not fit `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    /// The payload as a `serde_json::Value` (with whatever key order and number precision the
    /// application's serde_json gives a `Value`).
    pub fn to_value(&self) -> serde_json::Value {
        // The text is valid JSON by construction, so this only fails for a number out of the
        // range a Value can hold without `arbitrary_precision`; such a value reads as null.
        serde_json::from_str(self.get()).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the text is the JSON `null`.
    pub fn is_null(&self) -> bool {
        self.get().trim() == "null"
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Payload::from(&value)
    }
}

impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Self {
        // A Value always prints as valid JSON, so the fallback is never taken.
        serde_json::value::to_raw_value(value)
            .map(Payload)
            .unwrap_or_else(|_| Payload::null())
    }
}

impl From<&Payload> for Payload {
    fn from(payload: &Payload) -> Self {
        payload.clone()
    }
}

impl From<Box<RawValue>> for Payload {
    fn from(raw: Box<RawValue>) -> Self {
        Payload(raw)
    }
}

impl Default for Payload {
    /// The empty object `{}`.
    fn default() -> Self {
        Payload::empty_object()
    }
}

impl fmt::Display for Payload {
    /// The exact JSON text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.get() == other.get()
    }
}

impl PartialEq<serde_json::Value> for Payload {
    fn eq(&self, other: &serde_json::Value) -> bool {
        serde_json::from_str::<serde_json::Value>(self.get()).is_ok_and(|v| &v == other)
    }
}

impl PartialEq<Payload> for serde_json::Value {
    fn eq(&self, other: &Payload) -> bool {
        other == self
    }
}

// Read from a `json` column (stored as text, so exactly what was written) or a `jsonb` one.
impl Type<Postgres> for Payload {
    fn type_info() -> PgTypeInfo {
        <sqlx::types::Json<Box<RawValue>> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <sqlx::types::Json<Box<RawValue>> as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Payload {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        // Rows written before payloads were kept as text went through `jsonb`, whose output puts
        // a space after each `:` and `,`: compacted like every other payload.
        let sqlx::types::Json(raw) = <sqlx::types::Json<Box<RawValue>>>::decode(value)?;
        Ok(Payload::compact(raw))
    }
}

/// `text` without whitespace outside strings, or `None` when it has none.
fn minified(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    let mut first_space = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            first_space = Some(i);
            break;
        }
    }
    let start = first_space?;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    for c in text[start..].chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            out.push(c);
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    Some(out)
}

fn lone(at: usize) -> String {
    format!("lone surrogate in a \\u escape at byte {at}")
}

/// How deep arrays and objects may nest: serde_json's own limit, so that every payload taken
/// can be read back into a `Value` or a type.
const MAX_DEPTH: usize = 128;

/// The first problem of `text` (valid JSON syntax already) that a JSON reader refuses: a
/// `\u` escape that is half of a surrogate pair, or nesting deeper than [`MAX_DEPTH`].
pub(crate) fn problem(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (mut depth, mut in_string, mut i) = (0usize, false, 0);
    // The high surrogate just read, waiting for its low half.
    let mut high: Option<usize> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if b == b'\\' && bytes.get(i + 1) == Some(&b'u') {
                let unit = text
                    .get(i + 2..i + 6)
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or(0);
                match (high.take(), unit) {
                    (None, 0xD800..=0xDBFF) => high = Some(i),
                    (Some(_), 0xDC00..=0xDFFF) => {}
                    (Some(at), _) => return Some(lone(at)),
                    (None, 0xDC00..=0xDFFF) => return Some(lone(i)),
                    (None, _) => {}
                }
                i += 6;
                continue;
            }
            if let Some(at) = high.take() {
                return Some(lone(at));
            }
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some(format!("nested deeper than {MAX_DEPTH} levels"));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_exactly() {
        let text = r#"{"b":1.50,"a":123456789012345678901234567890,"b":2,"e":"\u0041"}"#;
        let payload = Payload::from_json(text).unwrap();
        assert_eq!(payload.get(), text);
        assert_eq!(payload.to_string(), text);
        let wrapped = serde_json::to_string(&serde_json::json!({"x": 1})).unwrap();
        assert_eq!(wrapped, r#"{"x":1}"#);
        #[derive(Serialize)]
        struct Envelope<'a> {
            payload: &'a Payload,
        }
        let out = serde_json::to_string(&Envelope { payload: &payload }).unwrap();
        assert_eq!(out, format!(r#"{{"payload":{text}}}"#));
    }

    #[test]
    fn whitespace_between_tokens_goes_and_strings_keep_theirs() {
        let payload =
            Payload::from_json("{ \"a b\" : [1 ,\t2.50 ] ,\n\"c\":\"x\\\" y\" }").unwrap();
        assert_eq!(payload.get(), r#"{"a b":[1,2.50],"c":"x\" y"}"#);
        let nested: Payload = serde_json::from_str::<std::collections::HashMap<String, Payload>>(
            r#"{"p": {"k": [1, 2]}}"#,
        )
        .unwrap()
        .remove("p")
        .unwrap();
        assert_eq!(nested.get(), r#"{"k":[1,2]}"#);
    }

    #[test]
    fn lone_surrogates_and_deep_nesting_are_refused() {
        for bad in [
            r#""\udc00x""#,
            r#""\ud83dx""#,
            r#"["\ud83d"]"#,
            r#""\ud83d\u0041""#,
        ] {
            assert!(problem(bad).is_some(), "{bad}");
            assert!(Payload::from_json(bad).is_err(), "{bad}");
        }
        for good in [
            r#""\ud83d\ude00""#,
            r#""\\udc00""#,
            r#"{"a":[{"b":"\u00e9"}]}"#,
        ] {
            assert_eq!(problem(good), None, "{good}");
        }
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(problem(&deep).is_some());
        let fine = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert_eq!(problem(&fine), None);
    }

    #[test]
    fn equality_with_values_parses() {
        let payload = Payload::from_json(r#"{"a": 1, "b": [true]}"#).unwrap();
        assert_eq!(payload, serde_json::json!({"b": [true], "a": 1}));
        assert_ne!(payload, serde_json::json!({"a": 2}));
        assert!(Payload::from_json("not json").is_err());
        assert!(Payload::null().is_null());
        assert_eq!(Payload::default().get(), "{}");
    }
}
