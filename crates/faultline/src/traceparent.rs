//! W3C Trace Context `traceparent` values (<https://www.w3.org/TR/trace-context/>): what a job
//! keeps of the trace that enqueued it.

/// A parsed `traceparent`: `version-traceid-parentid-flags`, lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace's id (not all zero).
    pub trace_id: [u8; 16],
    /// The parent span's id (not all zero).
    pub span_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl Traceparent {
    /// Parse a `traceparent` header value of version `00` (or a later version, read as `00`
    /// reads it, as the recommendation asks).
    ///
    /// # Errors
    /// What is wrong with it, for an error message.
    pub fn parse(text: &str) -> Result<Traceparent, String> {
        let parts: Vec<&str> = text.split('-').collect();
        let hex = |s: &str, len: usize, what: &str| -> Result<Vec<u8>, String> {
            if s.len() != len
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!("{what} must be {len} lowercase hex digits"));
            }
            Ok((0..len / 2)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect())
        };
        if parts.len() < 4 {
            return Err("expected version-traceid-parentid-flags".into());
        }
        let version = hex(parts[0], 2, "the version")?;
        if version[0] == 0xff || (version[0] == 0 && parts.len() != 4) {
            return Err("unsupported version, or extra fields in version 00".into());
        }
        let trace_id: [u8; 16] = hex(parts[1], 32, "the trace id")?
            .try_into()
            .map_err(|_| "the trace id must be 16 bytes".to_owned())?;
        let span_id: [u8; 8] = hex(parts[2], 16, "the parent id")?
            .try_into()
            .map_err(|_| "the parent id must be 8 bytes".to_owned())?;
        let flags = hex(parts[3], 2, "the flags")?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err("the trace id and the parent id must not be all zeros".into());
        }
        Ok(Traceparent {
            trace_id,
            span_id,
            flags,
        })
    }
}

impl std::fmt::Display for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// The current span's context, where an enqueue reads it (feature `otel`): kept here, beside
/// the value it produces, so that the store depends on the model only.
#[cfg(feature = "otel")]
mod current {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::Traceparent;

    tokio::task_local! {
        /// A context that an enqueue continues when the current span has none: the API's
        /// `traceparent` header, so that a request's context is kept as sent even when no
        /// OpenTelemetry layer is installed (its `faultline.enqueue` span then has no context).
        static FALLBACK: Option<String>;
    }

    /// Run `enqueue` with `traceparent` as the context its jobs keep when the current span has no
    /// valid one of its own (see [`current_traceparent`]).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn with_fallback<F: std::future::Future>(
        traceparent: Option<String>,
        enqueue: F,
    ) -> F::Output {
        FALLBACK.scope(traceparent, enqueue).await
    }

    /// The current `tracing` span's OpenTelemetry context as a `traceparent`, if it has a valid one;
    /// else the fallback that the API set around its enqueue (`with_fallback`), if any.
    pub fn current_traceparent() -> Option<String> {
        span_traceparent().or_else(|| FALLBACK.try_with(Clone::clone).ok().flatten())
    }

    /// The current `tracing` span's OpenTelemetry context as a `traceparent`, if it has a valid one.
    fn span_traceparent() -> Option<String> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            Traceparent {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                flags: sc.trace_flags().to_u8(),
            }
            .to_string()
        })
    }
}

#[cfg(feature = "otel")]
pub use current::current_traceparent;
#[cfg(all(feature = "otel", feature = "http"))]
pub(crate) use current::with_fallback;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_round_trips_and_bad_ones_are_named() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = Traceparent::parse(text).unwrap();
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), text);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert!(Traceparent::parse(bad).is_err(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(Traceparent::parse(&format!("01{}-extra", &text[2..])).is_ok());
    }
}
