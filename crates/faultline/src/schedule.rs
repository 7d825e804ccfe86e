//! Schedules (docs/operations.md): what a schedule is, its cron read in an IANA time zone, and the
//! `--schedules FILE` (TOML) that declares schedules at start. Firing is in
//! `store/schedules.rs`, run by the maintainer (`maintenance/scheduler.rs`).
//!
//! Cron has 5 fields (minute, hour, day of month, month, day of week) or 6 (seconds first),
//! parsed by `croner`. Around daylight-saving changes it follows croner's (and Vixie cron's)
//! rules: a fixed time that falls in a spring-forward gap fires once, right after the gap; a
//! fixed time in a fall-back overlap fires once, at its first occurrence; wildcard and step
//! fields fire at every real instant that matches (none inside a gap, both passes of an
//! overlap). Slots are instants: each is named by its UTC time in the job's idempotency key.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::job::JobId;
use crate::names::name_problem;
use crate::payload::Payload;

/// Longest schedule name: its slot key (`schedule:{name}:{slot}`) must fit an idempotency key.
pub const MAX_SCHEDULE_NAME_LEN: usize = 200;

/// What to do with slots that came due while nothing was up to fire them.
// Read through a string: serde_json (with `arbitrary_precision`) reports a number given for an
// enum as malformed JSON, where a string read names the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Misfire {
    /// Enqueue one job, for the latest missed slot (never one per missed slot).
    #[default]
    RunOnce,
    /// Enqueue nothing for missed slots.
    Skip,
}

impl Misfire {
    /// The stored (and JSON) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::RunOnce => "run_once",
            Misfire::Skip => "skip",
        }
    }
}

impl TryFrom<String> for Misfire {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "run_once" => Ok(Misfire::RunOnce),
            "skip" => Ok(Misfire::Skip),
            _ => Err(format!("must be \"run_once\" or \"skip\", got {text:?}")),
        }
    }
}

/// A schedule as `PUT /v1/schedules/{name}` takes it (and as a `--schedules` file declares it,
/// with its `name`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// 5 fields (`*/5 * * * *`) or 6 with seconds first (`*/10 * * * * *`).
    pub cron: String,
    /// The job's kind.
    pub kind: String,
    /// The job's payload (kept exactly as sent; `{}` when omitted).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "http", schema(value_type = serde_json::Value))]
    pub payload: Payload,
    /// The job's queue (default `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// The job's priority (default 0).
    #[serde(default)]
    pub priority: Option<i16>,
    /// The job's attempt budget (default 5).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// IANA time zone the cron is read in (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `run_once` (default) or `skip`.
    #[serde(default)]
    pub misfire: Option<Misfire>,
    /// Whether it starts paused (default false).
    #[serde(default)]
    pub paused: Option<bool>,
}

impl ScheduleSpec {
    /// A schedule of jobs of type `A`: kind `A::KIND`, `args` as the payload, and the queue,
    /// priority and attempt budget of `A::options()` (so the jobs land where the type's workers
    /// serve). The time zone is UTC, the misfire policy `run_once` and the schedule active
    /// unless changed with [`ScheduleSpec::timezone`], [`ScheduleSpec::misfire`],
    /// [`ScheduleSpec::paused`].
    ///
    /// ```
    /// use faultline::schedule::{Misfire, ScheduleSpec};
    /// use faultline::{JobArgs, JobOptions};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Digest { team: String }
    ///
    /// impl JobArgs for Digest {
    ///     const KIND: &'static str = "digest.send";
    ///     fn options() -> JobOptions {
    ///         JobOptions { queue: Some("mail".into()), ..JobOptions::default() }
    ///     }
    /// }
    ///
    /// let spec = ScheduleSpec::for_job("0 9 * * 1-5", &Digest { team: "core".into() })?
    ///     .timezone("Europe/Paris")
    ///     .misfire(Misfire::Skip);
    /// assert_eq!(spec.queue.as_deref(), Some("mail"));
    /// assert_eq!(spec.kind, "digest.send");
    /// # Ok::<(), faultline::StoreError>(())
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Invalid`] (field `payload`) when `args` cannot be written as JSON. The cron
    /// and the time zone are checked when the schedule is stored.
    pub fn for_job<A: crate::JobArgs>(
        cron: impl Into<String>,
        args: &A,
    ) -> Result<ScheduleSpec, StoreError> {
        let job = crate::NewJob::from_args(args)?;
        Ok(ScheduleSpec {
            cron: cron.into(),
            kind: job.kind,
            payload: job.payload,
            queue: Some(job.queue),
            priority: Some(job.priority),
            max_attempts: Some(job.max_attempts),
            timezone: None,
            misfire: None,
            paused: None,
        })
    }

    /// The IANA time zone the cron is read in (`Europe/Paris`; UTC otherwise).
    pub fn timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = Some(timezone.into());
        self
    }

    /// What to do with slots missed while nothing was up to fire them.
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = Some(misfire);
        self
    }

    /// Whether the schedule starts paused.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = Some(paused);
        self
    }
}

fn empty_object() -> Payload {
    Payload::empty_object()
}

/// A stored schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// The cron, as written.
    pub cron: String,
    /// The IANA time zone it is read in.
    pub timezone: String,
    /// The job's kind.
    pub kind: String,
    /// The job's payload.
    #[cfg_attr(feature = "http", schema(value_type = serde_json::Value))]
    pub payload: Payload,
    /// The job's queue.
    pub queue: String,
    /// The job's priority.
    pub priority: i16,
    /// The job's attempt budget.
    pub max_attempts: i32,
    /// `run_once` or `skip`.
    #[sqlx(try_from = "String")]
    pub misfire: Misfire,
    /// Paused schedules fire nothing; the slots of a pause are not misfires.
    pub paused: bool,
    /// The next slot it fires (null when the cron never matches again).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The slot of the last job it enqueued.
    pub last_run_at: Option<DateTime<Utc>>,
    /// The last job it enqueued.
    #[cfg_attr(feature = "http", schema(value_type = Option<String>))]
    pub last_job_id: Option<JobId>,
    /// When it was first declared.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A cron read in a time zone.
#[derive(Clone, Debug)]
pub struct CronTab {
    cron: Cron,
    tz: Tz,
}

impl CronTab {
    /// Parse `cron` (5 or 6 fields) and `timezone` (IANA name).
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming `cron` or `timezone`.
    pub fn parse(cron: &str, timezone: &str) -> Result<CronTab, StoreError> {
        // Every listing returns the text: a megabyte of whitespace and commas is no schedule.
        if cron.len() > MAX_CRON_LEN {
            return Err(StoreError::invalid(
                "cron",
                format!("is {} bytes; at most {MAX_CRON_LEN} allowed", cron.len()),
            ));
        }
        let fields = cron.split_whitespace().count();
        if !(fields == 5 || fields == 6 || cron.trim_start().starts_with('@')) {
            return Err(StoreError::invalid(
                "cron",
                format!("must have 5 fields (minute precision) or 6 (seconds first), got {fields}: {cron:?}"),
            ));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| StoreError::invalid("cron", format!("{cron:?} is not a cron: {e}")))?;
        let tz = Tz::from_str(timezone).map_err(|_| {
            StoreError::invalid(
                "timezone",
                format!("{timezone:?} is not an IANA time zone (such as UTC or Europe/Berlin)"),
            )
        })?;
        let tab = CronTab { cron: parsed, tz };
        // A cron that parses but can never match (`0 0 30 2 *`) is refused here rather than
        // stored as a schedule that silently never fires.
        if tab.next_after(Utc::now()).is_none() {
            return Err(StoreError::invalid(
                "cron",
                format!("{cron:?} never matches a real date"),
            ));
        }
        Ok(tab)
    }

    /// The first slot strictly after `after`, or `None` when there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The slots in `(after, through]`, oldest first, at most `cap` of them.
    pub fn slots(
        &self,
        after: DateTime<Utc>,
        through: DateTime<Utc>,
        cap: usize,
    ) -> Vec<DateTime<Utc>> {
        self.cron
            .iter_after(after.with_timezone(&self.tz))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= through)
            .take(cap)
            .collect()
    }

    /// The latest slot in `(after, before)`, if any.
    pub fn latest_before(
        &self,
        after: DateTime<Utc>,
        before: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&before.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t > after)
    }
}

/// The longest cron text accepted.
pub const MAX_CRON_LEN: usize = 1024;

/// The start of every schedule slot's idempotency key: reserved, a client's key may not start
/// with it (docs/operations.md).
pub const SLOT_KEY_PREFIX: &str = "schedule:";

/// The idempotency key of `schedule`'s job for `slot`.
pub fn slot_key(schedule: &str, slot: DateTime<Utc>) -> String {
    format!(
        "{SLOT_KEY_PREFIX}{schedule}:{}",
        slot.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// Why `name` cannot name a schedule, or `None`.
pub fn schedule_name_problem(name: &str) -> Option<String> {
    if name.len() > MAX_SCHEDULE_NAME_LEN {
        return Some(format!(
            "is {} bytes; at most {MAX_SCHEDULE_NAME_LEN} allowed",
            name.len()
        ));
    }
    name_problem(name)
}

/// A `--schedules` file: `[[schedule]]` tables, each a [`ScheduleSpec`] with its `name`.
#[derive(Debug, Default)]
pub struct ScheduleFile {
    /// The schedules it declares.
    pub schedule: Vec<NamedSchedule>,
}

/// One `[[schedule]]` of a file.
#[derive(Debug)]
pub struct NamedSchedule {
    /// Its name.
    pub name: String,
    /// Everything else.
    pub spec: ScheduleSpec,
}

/// The file as TOML: each table is read as a name plus a [`ScheduleSpec`] (a flattened struct
/// would let unknown keys through).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    schedule: Vec<toml::Table>,
}

/// Why a `--schedules` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleFileError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML of the expected shape.
    #[error("{path} is not a schedules file: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said.
        message: String,
    },
    /// A schedule in it is invalid.
    #[error("{path}: schedule {name:?}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The schedule.
        name: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ScheduleFile {
    /// Read and check `path`: every schedule's name, cron and time zone (the rest is checked
    /// against the database's limits when it is declared).
    ///
    /// # Errors
    /// [`ScheduleFileError`] naming the file, the schedule and the field.
    pub fn load(path: &Path) -> Result<ScheduleFile, ScheduleFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScheduleFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let parse_error = |message: String| ScheduleFileError::Parse {
            path: shown.clone(),
            message,
        };
        let raw: RawFile = toml::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
        let mut file = ScheduleFile::default();
        for (i, table) in raw.schedule.into_iter().enumerate() {
            file.schedule.push(named_schedule(i, table, &shown)?);
        }
        file.check(&shown)?;
        Ok(file)
    }

    /// Check every schedule's name (valid, declared once) and cron with its time zone.
    ///
    /// # Errors
    /// [`ScheduleFileError::Invalid`] for the first schedule that fails, naming the field.
    fn check(&self, shown: &str) -> Result<(), ScheduleFileError> {
        let mut seen = std::collections::HashSet::new();
        for s in &self.schedule {
            let invalid = |field: &str, message: String| ScheduleFileError::Invalid {
                path: shown.to_owned(),
                name: s.name.clone(),
                field: field.to_owned(),
                message,
            };
            if let Some(problem) = schedule_name_problem(&s.name) {
                return Err(invalid("name", problem));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(invalid("name", "is declared twice".into()));
            }
            let timezone = s.spec.timezone.as_deref().unwrap_or("UTC");
            if let Err(StoreError::Invalid { field, message }) =
                CronTab::parse(&s.spec.cron, timezone)
            {
                return Err(invalid(&field, message));
            }
        }
        Ok(())
    }
}

/// The `i`th `[[schedule]]` table of file `shown` as a name and a [`ScheduleSpec`], its payload
/// as JSON text.
///
/// # Errors
/// [`ScheduleFileError::Parse`] for a table that is not a schedule;
/// [`ScheduleFileError::Invalid`] for a payload JSON cannot hold.
fn named_schedule(
    i: usize,
    mut table: toml::Table,
    shown: &str,
) -> Result<NamedSchedule, ScheduleFileError> {
    let parse_error = |message: String| ScheduleFileError::Parse {
        path: shown.to_owned(),
        message,
    };
    let name = match table.remove("name") {
        Some(toml::Value::String(name)) => name,
        _ => {
            return Err(parse_error(format!(
                "schedule {i}: `name` must be a string"
            )))
        }
    };
    // JSON has no NaN or infinity: serde_json would store `null` in its place, a
    // payload other than the one written.
    if let Some(field) = table.get("payload").and_then(|p| non_finite(p, "payload")) {
        return Err(ScheduleFileError::Invalid {
            path: shown.to_owned(),
            name,
            field,
            message: "is nan or inf, which JSON cannot hold".into(),
        });
    }
    // The payload is written as JSON text itself: a payload is read from JSON only.
    let payload = table.remove("payload");
    let mut spec: ScheduleSpec = toml::Value::Table(table)
        .try_into()
        .map_err(|e| parse_error(format!("schedule {name:?}: {e}")))?;
    if let Some(payload) = payload {
        spec.payload = Payload::serialize(&payload)
            .map_err(|e| parse_error(format!("schedule {name:?}: payload: {e}")))?;
    }
    Ok(NamedSchedule { name, spec })
}

/// The path (`payload.a[2].b`) of the first float in `value` that is NaN or infinite.
fn non_finite(value: &toml::Value, path: &str) -> Option<String> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(path.to_owned()),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(v, &format!("{path}[{i}]"))),
        toml::Value::Table(table) => table
            .iter()
            .find_map(|(k, v)| non_finite(v, &format!("{path}.{k}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn five_and_six_fields_are_cron_and_other_counts_are_not() {
        assert!(CronTab::parse("*/5 * * * *", "UTC").is_ok());
        assert!(CronTab::parse("*/1 * * * * *", "UTC").is_ok());
        for bad in [
            "* * * *",
            "* * * * * * *",
            "",
            "61 * * * *",
            "* * * * mon-xyz",
            "0 0 30 2 *",
        ] {
            match CronTab::parse(bad, "UTC") {
                Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "cron", "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match CronTab::parse("* * * * *", "Mars/Olympus") {
            Err(StoreError::Invalid { field, .. }) => assert_eq!(field, "timezone"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn slots_are_read_in_the_time_zone() {
        let tab = CronTab::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // 09:00 in Berlin in winter is 08:00 UTC.
        assert_eq!(
            tab.next_after(utc("2026-12-02T00:00:00Z")),
            Some(utc("2026-12-02T08:00:00Z"))
        );
        // …and in summer 07:00 UTC.
        assert_eq!(
            tab.next_after(utc("2026-07-01T00:00:00Z")),
            Some(utc("2026-07-01T07:00:00Z"))
        );
    }

    #[test]
    fn a_fixed_time_in_the_spring_gap_fires_once_right_after_it() {
        // 2027-03-28: Berlin jumps from 02:00 to 03:00 (01:00 UTC). 02:30 does not exist.
        let tab = CronTab::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let day = tab.slots(utc("2027-03-27T12:00:00Z"), utc("2027-03-28T12:00:00Z"), 10);
        assert_eq!(day.len(), 1, "{day:?}");
        assert_eq!(
            day[0],
            utc("2027-03-28T01:00:00Z"),
            "03:00 CEST, right after the gap"
        );
        // The next day is back to 02:30 local (00:30 UTC).
        assert_eq!(tab.next_after(day[0]), Some(utc("2027-03-29T00:30:00Z")));
    }

    #[test]
    fn a_fixed_time_in_the_autumn_overlap_fires_once() {
        // 2026-10-25: Berlin falls back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
        let tab = CronTab::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let day = tab.slots(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T12:00:00Z"), 10);
        assert_eq!(
            day,
            vec![utc("2026-10-25T00:30:00Z")],
            "once, at the first 02:30"
        );
    }

    #[test]
    fn an_hourly_cron_fires_at_every_real_hour_through_both_changes() {
        let tab = CronTab::parse("0 * * * *", "Europe/Berlin").unwrap();
        // The autumn day has 25 hours, the spring day 23: one slot per real hour either way.
        let autumn = tab.slots(
            utc("2026-10-24T22:00:00Z"),
            utc("2026-10-25T23:00:00Z"),
            100,
        );
        assert_eq!(autumn.len(), 25, "{autumn:?}");
        let spring = tab.slots(
            utc("2027-03-27T23:00:00Z"),
            utc("2027-03-28T22:00:00Z"),
            100,
        );
        assert_eq!(spring.len(), 23, "{spring:?}");
        for pair in autumn.windows(2).chain(spring.windows(2)) {
            assert_eq!(pair[1] - pair[0], chrono::Duration::hours(1), "{pair:?}");
        }
    }

    #[test]
    fn the_latest_missed_slot_is_found_without_walking_every_slot() {
        let tab = CronTab::parse("* * * * * *", "UTC").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let before = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        assert_eq!(
            tab.latest_before(after, before),
            Some(before - chrono::Duration::seconds(1))
        );
        assert_eq!(tab.latest_before(after, after), None);
    }

    #[test]
    fn slot_keys_name_the_slot_in_utc() {
        assert_eq!(
            slot_key("nightly", utc("2026-12-02T03:00:00+01:00")),
            "schedule:nightly:2026-12-02T02:00:00Z"
        );
    }
}
