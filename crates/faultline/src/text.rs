//! Text as Postgres can store it.
//!
//! Postgres refuses the NUL character in `text` and `jsonb` (`invalid byte sequence for encoding
//! "UTF8": 0x00`, `unsupported Unicode escape sequence`), and a Rust `String` may hold one. Text
//! that comes from outside and is only *recorded* (a handler's error, what a remote answered, a
//! worker's name in the history) is made storable here instead of being refused: a report that
//! the database rejects for its text would otherwise leave the job running with nothing to show.
//! Text that *identifies* something (queue, kind, keys) is refused at the edge instead (see
//! [`crate::names`]), because changing it would change what it names.

use std::borrow::Cow;

/// `text` with every NUL replaced by U+FFFD; borrowed when there is none (the usual case).
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Bytes from a remote (a webhook receiver's answer) as storable text: invalid UTF-8 replaced by
/// U+FFFD (lossy, as a log would show it), NUL too, and cut to at most `max` bytes on a
/// character boundary.
#[cfg_attr(not(feature = "webhook"), allow(dead_code))]
pub fn from_remote(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = storable(&text);
    truncate(&text, max).to_owned()
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The first control character (NUL, newline, escape, …) in `text`, if any.
pub fn first_control(text: &str) -> Option<char> {
    text.chars().find(|c| c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_and_clean_text_is_borrowed() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        assert!(matches!(storable("clean"), Cow::Borrowed("clean")));
    }

    #[test]
    fn remote_bytes_become_valid_bounded_text() {
        assert_eq!(
            from_remote(b"ok\0\xff\xfe tail", 100),
            "ok\u{FFFD}\u{FFFD}\u{FFFD} tail"
        );
        assert_eq!(from_remote("héllo".as_bytes(), 2), "h");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello", 3), "hel");
        assert_eq!(truncate("héllo", 2), "h");
    }
}
