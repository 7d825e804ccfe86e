//! Durable steps, sleeps and signals (docs/durable.md; migration `durable_steps`): a step's
//! result recorded once under the lease that ran it, a sleep that gives the job's slot and
//! lease back until a time, a wait that parks the job in `waiting` until a signal or a
//! deadline. Every write here that acts for a handler is fenced by its lease token, as its
//! reports are.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::statement::{ExecuteOnStore, OnStore};
use super::{Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::job::{JobId, JobState};
use crate::lease::Lease;
use crate::payload::Payload;
pub use crate::step::{Step, WaitingFor};

/// Step names the library keeps for its own records (a sleep's deadline, a wait's outcome).
pub const RESERVED_PREFIX: &str = "faultline:";

/// Where a durable sleep stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sleep {
    /// Its time has come: go on.
    Over,
    /// The job was put back to run at this time; the handler must return now.
    Sleeping(DateTime<Utc>),
}

/// Where a wait for a signal stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Wait {
    /// The signal came, with this payload (JSON `null` when it had none).
    Signalled(Payload),
    /// The wait timed out before the signal came.
    TimedOut,
    /// The job was parked until the signal or `until`; the handler must return now.
    Parked(DateTime<Utc>),
}

/// What a signal sent to a job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signalled {
    /// Kept; the job, if it was parked waiting for it, was queued to run.
    Kept,
    /// A signal of that name had been sent already: the first is kept, this one dropped.
    Duplicate,
}

/// `name` checked as a step or signal name: 1–255 bytes, no control characters.
///
/// # Errors
/// [`StoreError::Invalid`] naming `field`.
pub fn check_name(field: &str, name: &str) -> Result<(), StoreError> {
    match crate::names::label_problem(name) {
        Some(problem) => Err(StoreError::invalid(field, problem)),
        None => Ok(()),
    }
}

impl Store {
    /// Every step `id` recorded, oldest first (empty for an unknown job).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn steps(&self, id: JobId) -> Result<Vec<Step>, StoreError> {
        Ok(sqlx::query_as(
            "select name, result, recorded_at, attempt, lease_token
             from faultline.job_steps where job_id = $1 order by recorded_at, name",
        )
        .bind(id)
        .all_on(self)
        .await?)
    }

    /// The step `name` of job `id`, if recorded.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn step(&self, id: JobId, name: &str) -> Result<Option<Step>, StoreError> {
        Ok(sqlx::query_as(
            "select name, result, recorded_at, attempt, lease_token
             from faultline.job_steps where job_id = $1 and name = $2",
        )
        .bind(id)
        .bind(name)
        .optional_on(self)
        .await?)
    }

    /// Record `result` as step `name` of the job `lease` holds, unless a step of that name is
    /// recorded already; returns the step as recorded (the earlier one, when there was one —
    /// a name is recorded once). Fenced: see the migration `durable_steps`.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when `lease` no longer holds the job (nothing recorded);
    /// [`StoreError::Invalid`] for a bad name or a result over `max_result_bytes`;
    /// [`StoreError::Database`].
    pub async fn record_step(
        &self,
        lease: &Lease,
        name: &str,
        result: &Payload,
    ) -> Result<Step, StoreError> {
        let mut conn = self.pool().acquire().await?;
        self.record_step_in(&mut conn, lease, name, result).await
    }

    /// [`Store::record_step`] inside the caller's transaction: the step's record commits with
    /// the caller's own writes in it, or neither does. On [`StoreError::LeaseLost`] the caller
    /// must roll back (its writes were made without a lease).
    ///
    /// # Errors
    /// As [`Store::record_step`].
    pub async fn record_step_in(
        &self,
        conn: &mut sqlx::PgConnection,
        lease: &Lease,
        name: &str,
        result: &Payload,
    ) -> Result<Step, StoreError> {
        check_name("name", name)?;
        let text = self
            .result_text(result)
            .map_err(|e| rename_result_error(e, name))?;
        let recorded: Option<StepRow> = sqlx::query_as(RECORD_STEP)
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(name)
            .bind(text.as_deref())
            .persistent(self.uses_prepared_statements())
            .fetch_optional(&mut *conn)
            .await?;
        match recorded {
            Some(StepRow { held: true, step }) => Ok(step),
            Some(StepRow { held: false, .. }) => Err(self.lost_or_unknown(lease).await?),
            // Held, and the name recorded by a statement that committed after this one's
            // snapshot (two calls of one name at once): read it now.
            None => match self.step(lease.job_id, name).await? {
                Some(step) => Ok(step),
                None => Err(self.lost_or_unknown(lease).await?),
            },
        }
    }

    /// A durable sleep under `lease`, named `key` (the n-th sleep of a handler): the first
    /// time, `until` is recorded as the step `key` and the job is put back to run then, its
    /// attempt handed back (like [`Store::snooze`]); when the job runs again, the recorded
    /// time is kept (a handler that computes "an hour from now" again does not sleep again),
    /// and once it has passed the sleep is [`Sleep::Over`].
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] (nothing changed); [`StoreError::Database`].
    pub async fn sleep_until(
        &self,
        lease: &Lease,
        key: &str,
        until: DateTime<Utc>,
    ) -> Result<Sleep, StoreError> {
        let recorded = match self.step(lease.job_id, key).await? {
            Some(step) => step,
            None => {
                let value = Payload::serialize(&serde_json::json!({ "until": until }))
                    .map_err(|e| StoreError::invalid("until", e.to_string()))?;
                self.record_step(lease, key, &value).await?
            }
        };
        let until = recorded_time(&recorded, "until").unwrap_or(until);
        let left = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return Ok(Sleep::Over);
        }
        self.snooze(lease, left).await?;
        Ok(Sleep::Sleeping(until))
    }

    /// Wait under `lease` for the signal `name`, at most `timeout` from the first call: the
    /// signal if it was sent (before the wait too), [`Wait::TimedOut`] once the deadline has
    /// passed without it, else the job is parked in `waiting` until one of them
    /// ([`Wait::Parked`]; its attempt handed back). The outcome is recorded as a step, so a
    /// handler that runs again gets the same answer.
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] (nothing changed); [`StoreError::Invalid`] for a bad name;
    /// [`StoreError::Database`].
    pub async fn wait_for_signal(
        &self,
        lease: &Lease,
        name: &str,
        timeout: Duration,
    ) -> Result<Wait, StoreError> {
        check_name("signal", name)?;
        let outcome_key = format!("{RESERVED_PREFIX}signal:{name}");
        if let Some(step) = self.step(lease.job_id, &outcome_key).await? {
            return Ok(recorded_wait(&step));
        }
        if let Some(payload) = self.signal(lease.job_id, name).await? {
            self.record_wait(lease, &outcome_key, Some(&payload))
                .await?;
            return Ok(Wait::Signalled(payload));
        }
        let deadline_key = format!("{RESERVED_PREFIX}wait:{name}");
        let asked = Utc::now()
            + chrono::Duration::from_std(timeout)
                .unwrap_or(chrono::Duration::MAX)
                .min(chrono::Duration::days(36_500));
        let until = self.wait_deadline(lease, &deadline_key, asked).await?;
        if until <= Utc::now() {
            self.record_wait(lease, &outcome_key, None).await?;
            return Ok(Wait::TimedOut);
        }
        self.park(lease, name, until).await?;
        Ok(Wait::Parked(until))
    }

    /// The deadline of a wait: the one recorded as step `key`, or `asked`, recorded now.
    async fn wait_deadline(
        &self,
        lease: &Lease,
        key: &str,
        asked: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let step = match self.step(lease.job_id, key).await? {
            Some(step) => step,
            None => {
                let value = Payload::serialize(&serde_json::json!({ "until": asked }))
                    .map_err(|e| StoreError::invalid("timeout", e.to_string()))?;
                self.record_step(lease, key, &value).await?
            }
        };
        Ok(recorded_time(&step, "until").unwrap_or(asked))
    }

    /// Record a wait's outcome as step `key`: the signal's payload, or a timeout.
    async fn record_wait(
        &self,
        lease: &Lease,
        key: &str,
        payload: Option<&Payload>,
    ) -> Result<(), StoreError> {
        let outcome = match payload {
            Some(payload) => format!(r#"{{"signal":{}}}"#, payload.get()),
            None => r#"{"timed_out":true}"#.to_owned(),
        };
        let outcome = Payload::from_json(outcome)
            .map_err(|e| StoreError::invalid("payload", e.to_string()))?;
        self.record_step(lease, key, &outcome).await.map(drop)
    }

    /// The payload of signal `name` sent to job `id`, if one was.
    async fn signal(&self, id: JobId, name: &str) -> Result<Option<Payload>, StoreError> {
        let row: Option<(Option<Payload>,)> = sqlx::query_as(
            "select payload from faultline.job_signals where job_id = $1 and name = $2",
        )
        .bind(id)
        .bind(name)
        .optional_on(self)
        .await?;
        Ok(row.map(|(p,)| p.unwrap_or_else(Payload::null)))
    }

    /// Park the job `lease` holds until signal `name` or `until`: `waiting`, its lease and
    /// slot given back, its attempt handed back. A signal already sent (it may have come since
    /// the caller looked) queues it at once instead: the statement looks for it, and a signal
    /// sent later finds the job parked (see [`Store::send_signal`]).
    async fn park(
        &self,
        lease: &Lease,
        name: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let parked: Option<(JobState,)> = sqlx::query_as(PARK)
            .bind(lease.job_id)
            .bind(lease.token)
            .bind(name)
            .bind(until)
            .bind(JOB_CHANNEL)
            .optional_on(self)
            .await?;
        match parked {
            Some(_) => Ok(()),
            None => Err(self.lost_or_unknown(lease).await?),
        }
    }

    /// Send signal `name` with `payload` to job `id`: kept (the first of a name; a second is
    /// dropped), and the job queued at once if it is parked waiting for it.
    ///
    /// Why a parked job is never missed: the signal is committed by its own statement first,
    /// then the job is woken by a second one. A park that committed before the second
    /// statement is seen by it; a park still open makes it wait for the row and re-check it;
    /// a park that starts after the signal committed finds the signal itself and does not
    /// park.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown job; [`StoreError::InvalidTransition`] for a
    /// finished one (nothing kept); [`StoreError::Invalid`] for a bad name;
    /// [`StoreError::Database`].
    pub async fn send_signal(
        &self,
        id: JobId,
        name: &str,
        payload: &Payload,
    ) -> Result<Signalled, StoreError> {
        check_name("name", name)?;
        payload
            .check()
            .map_err(|e| StoreError::invalid("payload", format!("is not valid JSON: {e}")))?;
        let state: Option<JobState> =
            sqlx::query_scalar("select state from faultline.all_jobs where id = $1")
                .bind(id)
                .optional_on(self)
                .await?;
        match state {
            None => return Err(StoreError::NotFound(id)),
            Some(state) if state.is_terminal() => {
                return Err(StoreError::InvalidTransition {
                    id,
                    state,
                    action: "signal",
                })
            }
            Some(_) => {}
        }
        let kept = sqlx::query(
            "insert into faultline.job_signals (job_id, name, payload) values ($1, $2, $3::json)
             on conflict (job_id, name) do nothing",
        )
        .bind(id)
        .bind(name)
        .bind((!payload.is_null()).then(|| payload.get()))
        .execute_on(self)
        .await?
        .rows_affected();
        sqlx::query(WAKE_SIGNALLED)
            .bind(id)
            .bind(name)
            .bind(JOB_CHANNEL)
            .execute_on(self)
            .await?;
        Ok(if kept == 1 {
            Signalled::Kept
        } else {
            Signalled::Duplicate
        })
    }

    /// Queue every parked job whose wait has timed out. Returns how many. The maintainer runs
    /// it with the reaper.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn wake_timed_out_waits(&self) -> Result<u64, StoreError> {
        let woken: Vec<(JobId,)> = sqlx::query_as(WAKE_TIMED_OUT)
            .bind(JOB_CHANNEL)
            .all_on(self)
            .await?;
        Ok(woken.len() as u64)
    }

    /// What job `id` is parked for, if it is.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn waiting_for(&self, id: JobId) -> Result<Option<WaitingFor>, StoreError> {
        let row: Option<(String, DateTime<Utc>)> = sqlx::query_as(
            "select waiting_signal, waiting_until from faultline.jobs
             where id = $1 and waiting_signal is not null",
        )
        .bind(id)
        .optional_on(self)
        .await?;
        Ok(row.map(|(signal, until)| WaitingFor { signal, until }))
    }

    /// Delete the steps and signals of jobs that no longer exist (pruned from history).
    /// Returns how many rows.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn forget_orphan_steps(&self) -> Result<u64, StoreError> {
        let mut gone = 0;
        for table in ["job_steps", "job_signals"] {
            gone += sqlx::query(&format!(
                "delete from faultline.{table} s
                 where not exists (select 1 from faultline.jobs j where j.id = s.job_id)
                   and not exists (select 1 from faultline.job_history h where h.id = s.job_id)"
            ))
            .execute_on(self)
            .await?
            .rows_affected();
        }
        Ok(gone)
    }
}

/// A step's result error named after the step.
fn rename_result_error(error: StoreError, name: &str) -> StoreError {
    match error {
        StoreError::Invalid { message, .. } => {
            StoreError::invalid("result", format!("of step {name:?} {message}"))
        }
        other => other,
    }
}

/// The time in field `field` of a recorded step's result.
fn recorded_time(step: &Step, field: &str) -> Option<DateTime<Utc>> {
    let value = step.result.as_ref()?.to_value();
    value.get(field)?.as_str()?.parse().ok()
}

/// A recorded wait outcome.
fn recorded_wait(step: &Step) -> Wait {
    let value = step
        .result
        .as_ref()
        .map(Payload::to_value)
        .unwrap_or_default();
    match value.get("signal") {
        Some(signal) => {
            Wait::Signalled(Payload::serialize(signal).unwrap_or_else(|_| Payload::null()))
        }
        None => Wait::TimedOut,
    }
}

/// What [`RECORD_STEP`] answers: whether the lease holds, and the step as recorded.
#[derive(sqlx::FromRow)]
struct StepRow {
    held: bool,
    #[sqlx(flatten)]
    step: Step,
}

/// Record a step: `$1` job, `$2` token, `$3` name, `$4` result text (null for none). Answers
/// one row — whether the lease holds, and the step as recorded now or earlier (a name is
/// recorded once) — or none when the lease does not hold and no step of the name exists. One
/// statement: the inserted row comes from `returning`, an earlier one from the snapshot.
const RECORD_STEP: &str = "with holder as (
        select id, attempts, lease_token from faultline.jobs
        where id = $1 and lease_token = $2 and lease_expires_at is not null
        for share
    ),
    inserted as (
        insert into faultline.job_steps (job_id, name, result, attempt, lease_token)
        select id, $3, $4::json, attempts, lease_token from holder
        on conflict (job_id, name) do nothing
        returning name, result, recorded_at, attempt, lease_token
    )
    select exists (select 1 from holder) as held, s.*
    from (
        select name, result, recorded_at, attempt, lease_token from inserted
        union all
        select name, result, recorded_at, attempt, lease_token from faultline.job_steps
        where job_id = $1 and name = $3 and not exists (select 1 from inserted)
    ) s";

/// Park: `$1` job, `$2` token, `$3` signal, `$4` until, `$5` channel. `waiting` unless the
/// signal is there already (then `queued`, eligible now, as every move back to queued writes
/// `eligible_at` from the statement's real clock for the lanes' marks). The attempt is handed
/// back, as a release does (attempts >= 1 while running).
const PARK: &str = "with parked as (
        update faultline.jobs j
        set state = case when s.here then 'queued' else 'waiting' end,
            waiting_signal = case when s.here then null else $3 end,
            waiting_until = case when s.here then null else $4::timestamptz end,
            attempts = attempts - 1,
            next_run_at = case when s.here then now() else $4::timestamptz end,
            eligible_at = case when s.here then clock_timestamp() end,
            lease_expires_at = null,
            updated_at = now()
        from (select exists (select 1 from faultline.job_signals
                             where job_id = $1 and name = $3) as here) s
        where j.id = $1 and j.lease_token = $2 and j.lease_expires_at is not null
        returning j.id, j.queue, j.state
    )
    select state from parked
    left join lateral (select pg_notify($5, parked.queue) where parked.state = 'queued') n on true";

/// Wake the job `$1` parked for signal `$2`; `$3` the channel.
const WAKE_SIGNALLED: &str = "with woken as (
        update faultline.jobs
        set state = 'queued', waiting_signal = null, waiting_until = null,
            next_run_at = now(), eligible_at = clock_timestamp(), updated_at = now()
        where id = $1 and state = 'waiting' and waiting_signal = $2
        returning queue
    )
    select pg_notify($3, queue) from woken";

/// Wake every parked job whose wait timed out; `$1` the channel.
const WAKE_TIMED_OUT: &str = "with woken as (
        update faultline.jobs
        set state = 'queued', waiting_signal = null, waiting_until = null,
            next_run_at = now(), eligible_at = clock_timestamp(), updated_at = now()
        where waiting_signal is not null and waiting_until <= now()
        returning id, queue
    )
    select w.id from woken w
    left join lateral (select pg_notify($1, w.queue)) n on true";
