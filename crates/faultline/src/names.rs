//! One grammar for the names a worker must be able to serve: queues and kinds.
//!
//! A name is 1 to 255 bytes of ASCII letters, digits and `_ - . : / @ +`. No whitespace, no
//! comma, no control character: `--queues` splits on commas and the shell on spaces, so a queue
//! called `" padded "` or `"a,b"` could be enqueued into but never worked. The same check runs in
//! the HTTP API (422 naming the field), the Rust API ([`crate::StoreError::Invalid`]) and the
//! worker's flags (a start-up error naming the flag).
//!
//! Idempotency keys and worker ids are free text, but without control characters (NUL cannot be
//! stored; a newline in a key is a mistake).

use crate::job::MAX_NAME_LEN;
use crate::text::first_control;

/// The characters a queue or kind may hold besides ASCII letters and digits.
pub const NAME_PUNCTUATION: &str = "_-.:/@+";

/// Why `value` is not a valid queue or kind name, or `None` when it is (`email.send` is one;
/// ` padded ` and `a,b` are not).
pub fn name_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Some(format!(
            "is {} bytes; at most {MAX_NAME_LEN} allowed",
            value.len()
        ));
    }
    let bad = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(*c)))?;
    Some(format!(
        "contains {bad:?}; a name is ASCII letters, digits and {NAME_PUNCTUATION}"
    ))
}

/// Why `value` is not a valid free-text label (idempotency key, worker id), or `None`.
pub fn label_problem(value: &str) -> Option<String> {
    if value.trim().is_empty() {
        return Some("must not be empty or blank".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Some(format!(
            "is {} bytes; at most {MAX_NAME_LEN} allowed",
            value.len()
        ));
    }
    first_control(value).map(|c| format!("contains the control character {c:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(name_problem("email.send"), None);
        assert!(name_problem(" padded ").is_some());
        assert!(name_problem("a,b").is_some());
    }

    #[test]
    fn names_follow_one_grammar() {
        for ok in [
            "default",
            "email.send",
            "a-b_c:d/e@f+g",
            "Q1",
            &"x".repeat(255),
        ] {
            assert_eq!(name_problem(ok), None, "{ok:?}");
        }
        for bad in [
            "",
            " padded ",
            "a,b",
            "a b",
            "tab\t",
            "nul\0",
            "é",
            &"x".repeat(256),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn labels_refuse_control_characters_only() {
        assert_eq!(label_problem("order 42 / é"), None);
        assert!(label_problem("a\nb").is_some());
        assert!(label_problem("a\0b").is_some());
        assert!(label_problem("").is_some());
    }
}
