//! The times and durations Faultline accepts: what Postgres, chrono and every client can
//! represent, checked at the edge (requests, the Rust API, flags) so that no stored time can make
//! a later read or a later claim fail.
//!
//! Postgres' `timestamptz` reaches 294276 AD, chrono 262143 AD, RFC 3339 (what the API writes)
//! 9999 AD; a time must fit all three. A duration that is added to `now()` (a lease, a backoff, a
//! timeout) must keep the sum inside that range for the next few thousand years, hence 100 years
//! at most: longer is a typo, not a plan.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

/// Longest duration accepted by any setting: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The earliest time accepted (`0001-01-01T00:00:00Z`).
pub fn min_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
}

/// The latest time accepted (`9999-12-31T23:59:59.999999Z`).
pub fn max_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .expect("a valid date")
        .and_utc()
}

/// Why `time` is out of range, or `None`.
pub fn time_problem(time: DateTime<Utc>) -> Option<String> {
    (time < min_time() || time > max_time()).then(|| {
        format!("{time} is out of range; times must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
    })
}

/// Why `duration` is too long for a setting, or `None`.
pub fn duration_problem(duration: Duration) -> Option<String> {
    (duration > MAX_DURATION).then(|| {
        format!(
            "{} is longer than the 100 years any duration may be",
            humantime::format_duration(duration)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_outside_is_refused() {
        assert_eq!(time_problem(min_time()), None);
        assert_eq!(time_problem(max_time()), None);
        assert!(time_problem(min_time() - chrono::Duration::microseconds(1)).is_some());
        assert!(time_problem(max_time() + chrono::Duration::microseconds(1)).is_some());
        assert!(duration_problem(MAX_DURATION + Duration::from_secs(1)).is_some());
        assert_eq!(duration_problem(Duration::from_secs(30)), None);
    }
}
