//! Durable steps, sleeps and signals on a handler's context (docs/durable.md): what a job that
//! crashes halfway needs to resume after its last finished step, and what it needs to wait for
//! hours or for the outside world without holding a worker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::handler::{JobContext, JobError};
use crate::lease::Lease;
use crate::payload::Payload;
use crate::store::{Sleep, Step, Store, Wait, RESERVED_PREFIX};
use crate::StoreError;

impl JobContext {
    /// The store and lease this attempt runs under.
    fn durable(&self) -> Result<(&Store, &Lease), JobError> {
        self.fence
            .as_ref()
            .map(|(store, lease)| (store, lease))
            .ok_or_else(|| {
                JobError::permanent(
                    "durable steps need a lease (a JobContext::for_test context has none; use \
                     testing::run_job)",
                )
            })
    }

    /// Run `step` as the durable step `name` of this job, once: if the job recorded a step of
    /// that name (in this attempt or an earlier one), its recorded result is returned and
    /// `step` is not run; otherwise `step` runs and its result is recorded under this
    /// attempt's lease. So a job that crashed (or lost its lease, or failed and was retried)
    /// after step 2 runs again from the top, and steps 1 and 2 return at once.
    ///
    /// A name is recorded once: calling the same name twice gives the first result. Names are
    /// 1–255 bytes without control characters, and `faultline:…` is the library's own. The
    /// result is bounded like a job's result (`max_result_bytes`). A step that fails records
    /// nothing; its error is the handler's to return (and the job's retry policy applies).
    ///
    /// # Errors
    /// `step`'s own error; a permanent error for a bad name, a result that cannot be written
    /// as JSON or is over the limit, or a recorded result that no longer reads as `T`; a
    /// retryable error when the lease was lost (nothing was recorded: the holder that took
    /// the job over records the step) or the database failed.
    pub async fn step<T, F>(&self, name: &str, step: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = Result<T, JobError>>,
    {
        check_user_name(name)?;
        let (store, lease) = self.durable()?;
        if let Some(recorded) = self.recorded(store, lease, name).await? {
            return read(&recorded);
        }
        let value = step.await?;
        let result = encode(name, &value)?;
        let recorded = store
            .record_step(lease, name, &result)
            .await
            .map_err(step_error)?;
        self.remember(&recorded);
        read(&recorded)
    }

    /// [`JobContext::step`] whose own writes go in the caller's transaction `tx`, with its
    /// record: they commit together or not at all — the exactly-once pattern of
    /// [`JobContext::complete_and_commit`], per step. `step` gets the transaction's
    /// connection for its writes; commit `tx` after this returns `Ok` (dropping it rolls both
    /// back). A worker that lost its lease gets an error here and must not commit: nothing of
    /// its step lands.
    ///
    /// ```no_run
    /// use faultline::worker::{JobContext, JobError};
    ///
    /// async fn charge(ctx: &JobContext, pool: &sqlx::PgPool, order: i64) -> Result<(), JobError> {
    ///     let mut tx = pool.begin().await?;
    ///     let charge_id: i64 = ctx
    ///         .step_in(&mut tx, "charge", async |conn: &mut sqlx::PgConnection| {
    ///             let id = sqlx::query_scalar("insert into charges (order_id) values ($1) returning id")
    ///                 .bind(order)
    ///                 .fetch_one(&mut *conn)
    ///                 .await?;
    ///             Ok(id)
    ///         })
    ///         .await?;
    ///     tx.commit().await?;
    ///     let _ = charge_id;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    /// As [`JobContext::step`].
    pub async fn step_in<T, F>(
        &self,
        tx: &mut sqlx::PgConnection,
        name: &str,
        step: F,
    ) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, JobError>,
    {
        check_user_name(name)?;
        let (store, lease) = self.durable()?;
        if let Some(recorded) = self.recorded(store, lease, name).await? {
            return read(&recorded);
        }
        let value = step(&mut *tx).await?;
        let result = encode(name, &value)?;
        let recorded = store
            .record_step_in(tx, lease, name, &result)
            .await
            .map_err(step_error)?;
        // Not remembered: the caller's transaction may still roll back.
        self.count_step();
        read(&recorded)
    }

    /// Sleep durably until `until`: the job gives back its worker slot, its concurrency-key
    /// slot and its lease, and is claimed again at `until` (with a new, larger lease token);
    /// the attempt is not spent. Return the `Err` this gives at once (`?`): the worker reports
    /// nothing more for this run, and the job runs again from the top — its recorded steps
    /// return at once, and this same call (the handler's n-th sleep) then returns `Ok`,
    /// keeping the time recorded the first time (a handler that computes "in an hour" again
    /// does not sleep again). A time already past returns `Ok` at once.
    ///
    /// # Errors
    /// The suspension itself (return it); a retryable error when the lease was lost or the
    /// database failed.
    pub async fn sleep_until(&self, until: DateTime<Utc>) -> Result<(), JobError> {
        let (store, lease) = self.durable()?;
        let n = self.sleeps.fetch_add(1, Ordering::Relaxed) + 1;
        let key = format!("{RESERVED_PREFIX}sleep:{n}");
        match store
            .sleep_until(lease, &key, until)
            .await
            .map_err(step_error)?
        {
            Sleep::Over => Ok(()),
            Sleep::Sleeping(until) => Err(self.suspend(format!("sleeping until {until}"))),
        }
    }

    /// [`JobContext::sleep_until`] `duration` from now (from the first run: see there).
    ///
    /// # Errors
    /// As [`JobContext::sleep_until`].
    pub async fn sleep(&self, duration: Duration) -> Result<(), JobError> {
        let until = Utc::now()
            + chrono::Duration::from_std(duration)
                .unwrap_or(chrono::Duration::MAX)
                .min(chrono::Duration::days(36_500));
        self.sleep_until(until).await
    }

    /// Wait for the signal `name` (`POST /v1/jobs/{id}/signals/{name}`), at most `timeout`
    /// from the first call: `Ok(Some(payload))` once it came (a signal sent before the wait
    /// counts; the first of a name is kept), `Ok(None)` once the timeout passed without it.
    /// Until then the job parks in `waiting` — its slot and lease given back, the attempt not
    /// spent — and this returns an `Err` to return at once (`?`); the signal or the timeout
    /// runs the job again from the top, and this same call then answers. The answer is
    /// recorded: a later run gets the same.
    ///
    /// # Errors
    /// The suspension itself (return it); a permanent error for a bad name; a retryable error
    /// when the lease was lost or the database failed.
    pub async fn wait_for_signal(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Payload>, JobError> {
        let (store, lease) = self.durable()?;
        match store
            .wait_for_signal(lease, name, timeout)
            .await
            .map_err(step_error)?
        {
            Wait::Signalled(payload) => Ok(Some(payload)),
            Wait::TimedOut => Ok(None),
            Wait::Parked(until) => {
                Err(self.suspend(format!("waiting for signal {name:?} until {until}")))
            }
        }
    }

    /// Step `name` if this job recorded it: the job's steps are read once per run.
    async fn recorded(
        &self,
        store: &Store,
        lease: &Lease,
        name: &str,
    ) -> Result<Option<Step>, JobError> {
        let loaded = self.seen().is_some();
        if !loaded {
            let all = store.steps(lease.job_id).await?;
            *self.seen() = Some(all.into_iter().map(|s| (s.name.clone(), s)).collect());
        }
        Ok(self
            .seen()
            .as_ref()
            .and_then(|seen| seen.get(name).cloned()))
    }

    /// Keep `step`, just recorded (and committed), for this run's next lookups; count it.
    fn remember(&self, step: &Step) {
        if let Some(seen) = self.seen().as_mut() {
            seen.insert(step.name.clone(), step.clone());
        }
        self.count_step();
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Option<super::handler::StepsSeen>> {
        self.steps_seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_step(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.steps_recorded.inc();
        }
    }

    /// The error that ends a suspended run, the worker told to report nothing.
    fn suspend(&self, why: String) -> JobError {
        self.suspended.store(true, Ordering::Release);
        JobError::retryable(why)
    }
}

/// A user's step name: a name, and not one of the library's own.
fn check_user_name(name: &str) -> Result<(), JobError> {
    crate::store::check_name("name", name).map_err(|e| JobError::permanent(format!("step {e}")))?;
    if name.starts_with(RESERVED_PREFIX) {
        return Err(JobError::permanent(format!(
            "step name {name:?}: names starting with {RESERVED_PREFIX:?} are the library's own"
        )));
    }
    Ok(())
}

/// `value` as a step's result.
fn encode<T: Serialize>(name: &str, value: &T) -> Result<Payload, JobError> {
    Payload::serialize(value).map_err(|e| {
        JobError::permanent(format!(
            "step {name:?}: the result cannot be written as JSON: {e}"
        ))
    })
}

/// A recorded step's result as `T`.
fn read<T: DeserializeOwned>(step: &Step) -> Result<T, JobError> {
    let result = step.result.clone().unwrap_or_else(Payload::null);
    result.deserialize().map_err(|e| {
        JobError::permanent(format!(
            "step {:?}: the recorded result does not read as the step's type: {e}",
            step.name
        ))
    })
}

/// A store error from recording: an invalid result is permanent (the same step would return
/// it again); the rest (a lost lease, the database) retryable.
fn step_error(error: StoreError) -> JobError {
    match error {
        StoreError::Invalid { .. } => JobError::permanent(error),
        other => JobError::from(other),
    }
}
