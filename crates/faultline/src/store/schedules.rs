//! Schedules in the database (docs/operations.md): declare, read, pause, delete, and fire.
//!
//! ## Firing: exactly one job per slot
//!
//! [`Store::fire_schedules`] enqueues each due slot's job with the idempotency key
//! `schedule:{name}:{slot}` (`schedule.rs`), so a slot fired twice — by two processes that both
//! believe they lead, by a process that stalled past its term, by a restart that forgot what it
//! did — finds the first job and writes nothing. On top of that, each schedule is fired under its
//! row lock with its progress (`considered_until`) moved in the same transaction as its jobs, so
//! in the ordinary case the second firer sees the slot done and does not even try.
//!
//! ## Up or down: which slots are misfires
//!
//! `faultline.scheduler_clock` holds when a scheduler last ticked and since when schedulers
//! have ticked without a gap longer than [`UP_GAP`]. A slot that came due within such an up
//! period fires, however late the tick that sees it; a slot that came due before it (nothing was
//! up to fire it) is a misfire: `run_once` enqueues one job, for the latest missed slot, `skip`
//! none, and either way the missed slots are counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::statement::{ExecuteOnStore, OnStore};
use super::{BatchItem, Store};
use crate::error::StoreError;
use crate::job::{JobId, NewJob, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE};
use crate::payload::Payload;
use crate::schedule::{schedule_name_problem, slot_key, CronTab, Misfire, Schedule, ScheduleSpec};

/// Schedulers that ticked no further apart than this have been up all along; a longer gap is
/// downtime, and the slots inside it are misfires.
pub const UP_GAP: Duration = Duration::from_secs(3);

/// Most slots of one schedule fired in one pass, and most missed slots counted per catch-up.
const MAX_SLOTS: usize = 1000;

/// What one pass of [`Store::fire_schedules`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FireOutcome {
    /// The jobs enqueued: schedule, slot, job.
    pub enqueued: Vec<(String, DateTime<Utc>, JobId)>,
    /// Slots whose job already existed (fired before, by this or another process).
    pub already: usize,
    /// Missed slots that got no job, per schedule.
    pub misfires: Vec<(String, u64)>,
    /// Every schedule that is not paused (due or not), for metrics at zero.
    pub schedules: Vec<String>,
}

/// A due schedule as the pass reads it under its lock.
#[derive(sqlx::FromRow)]
struct Due {
    name: String,
    cron: String,
    timezone: String,
    kind: String,
    payload: Payload,
    queue: String,
    priority: i16,
    max_attempts: i32,
    #[sqlx(try_from = "String")]
    misfire: Misfire,
    considered_until: DateTime<Utc>,
}

impl Store {
    /// Create or replace schedule `name`. Returns it and whether it was created. Replacing it
    /// with the same cron and time zone keeps its progress (a process that declares its
    /// schedules at every start does not forget the slots missed while it was down); a new cron
    /// or zone starts from now.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the field (nothing written); [`StoreError::Database`].
    pub async fn put_schedule(
        &self,
        name: &str,
        spec: &ScheduleSpec,
    ) -> Result<(Schedule, bool), StoreError> {
        let Checked {
            job,
            payload,
            timezone,
            next,
        } = self.check(name, spec)?;
        let misfire = spec.misfire.unwrap_or_default();
        // `xmax = 0` tells an inserted row from an updated one. The progress is kept when the
        // slots it counts are the same slots (same cron, same zone).
        let row: ScheduleRow = sqlx::query_as(
            "insert into faultline.schedules as s (name, cron, timezone, kind, payload, queue,
                    priority, max_attempts, misfire, paused, next_run_at)
                 values ($1, $2, $3, $4, $5::json, $6, $7, $8, $9, coalesce($10, false), $11)
                 on conflict (name) do update set
                    cron = excluded.cron, timezone = excluded.timezone, kind = excluded.kind,
                    payload = excluded.payload, queue = excluded.queue,
                    priority = excluded.priority, max_attempts = excluded.max_attempts,
                    misfire = excluded.misfire,
                    paused = coalesce($10, s.paused),
                    -- A resume through PUT starts from now too: a pause has no misfires.
                    considered_until = case
                        when s.cron = excluded.cron and s.timezone = excluded.timezone
                             and not (s.paused and not coalesce($10, s.paused))
                        then s.considered_until else now() end,
                    next_run_at = case
                        when s.cron = excluded.cron and s.timezone = excluded.timezone
                        then s.next_run_at else excluded.next_run_at end,
                    updated_at = now()
                 returning s.*, (xmax = 0) as created",
        )
        .bind(name)
        .bind(&spec.cron)
        .bind(&timezone)
        .bind(&job.kind)
        .bind(payload)
        .bind(&job.queue)
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(misfire.as_str())
        .bind(spec.paused)
        .bind(next)
        .one_on(self)
        .await?;
        Ok((row.schedule, row.created))
    }

    /// Check schedule `name` as [`Store::put_schedule`] would, without the database: what a
    /// process declaring schedules from a file does before it starts.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the field.
    pub fn check_schedule(&self, name: &str, spec: &ScheduleSpec) -> Result<(), StoreError> {
        self.check(name, spec).map(|_| ())
    }

    fn check(&self, name: &str, spec: &ScheduleSpec) -> Result<Checked, StoreError> {
        if let Some(problem) = schedule_name_problem(name) {
            return Err(StoreError::invalid("name", problem));
        }
        let timezone = spec.timezone.clone().unwrap_or_else(|| "UTC".into());
        let tab = CronTab::parse(&spec.cron, &timezone)?;
        let job = NewJob {
            queue: spec.queue.clone().unwrap_or_else(|| DEFAULT_QUEUE.into()),
            priority: spec.priority.unwrap_or(0),
            max_attempts: spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            ..NewJob::new(spec.kind.clone(), spec.payload.clone())
        };
        self.validate(&job)?;
        let payload = self.payload_text(&job)?;
        Ok(Checked {
            job,
            payload,
            timezone,
            next: tab.next_after(Utc::now()),
        })
    }

    /// Every schedule, by name.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        Ok(
            sqlx::query_as("select * from faultline.schedules order by name")
                .all_on(self)
                .await?,
        )
    }

    /// Schedule `name`.
    ///
    /// # Errors
    /// [`StoreError::ScheduleNotFound`]; [`StoreError::Database`].
    pub async fn schedule(&self, name: &str) -> Result<Schedule, StoreError> {
        sqlx::query_as("select * from faultline.schedules where name = $1")
            .bind(name)
            .optional_on(self)
            .await?
            .ok_or_else(|| StoreError::ScheduleNotFound(name.to_owned()))
    }

    /// Delete schedule `name` (its jobs stay).
    ///
    /// # Errors
    /// [`StoreError::ScheduleNotFound`]; [`StoreError::Database`].
    pub async fn delete_schedule(&self, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("delete from faultline.schedules where name = $1")
            .bind(name)
            .execute_on(self)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::ScheduleNotFound(name.to_owned()));
        }
        Ok(())
    }

    /// Pause (`true`) or resume (`false`) schedule `name`. The slots of a pause are not
    /// misfires: resuming starts from now.
    ///
    /// # Errors
    /// [`StoreError::ScheduleNotFound`]; [`StoreError::Database`].
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Schedule, StoreError> {
        let row: Option<Schedule> = sqlx::query_as(
            "update faultline.schedules
             set considered_until = case when paused and not $2 then now()
                                         else considered_until end,
                 paused = $2,
                 updated_at = now()
             where name = $1
             returning *",
        )
        .bind(name)
        .bind(paused)
        .optional_on(self)
        .await?;
        let mut schedule = row.ok_or_else(|| StoreError::ScheduleNotFound(name.to_owned()))?;
        if !paused {
            // The next slot from now, for readers (the pass keeps it current from then on).
            let tab = CronTab::parse(&schedule.cron, &schedule.timezone)?;
            schedule.next_run_at = tab.next_after(Utc::now());
            sqlx::query("update faultline.schedules set next_run_at = $2 where name = $1")
                .bind(name)
                .bind(schedule.next_run_at)
                .execute_on(self)
                .await?;
        }
        Ok(schedule)
    }

    /// Fire every due schedule: in chunks of schedules, each in one transaction under their row
    /// locks, enqueueing every due slot's job with the slot's idempotency key (one statement for
    /// the chunk's jobs) and moving each schedule's progress in the same transaction (see the
    /// module docs). Downtime is judged by the gap since the last tick ([`UP_GAP`]); a
    /// scheduler that runs passes continuously uses [`Store::fire_schedules_in`], whose own
    /// passes never count as downtime however long they take.
    ///
    /// # Errors
    /// [`StoreError::Database`]; chunks fired before the error stay fired.
    pub async fn fire_schedules(&self) -> Result<FireOutcome, StoreError> {
        self.fire(None).await
    }

    /// [`Store::fire_schedules`] by the scheduler of one tenure (`tenure`, unique to it: one
    /// maintainer's term). Ticks of the same tenure follow each other without downtime, whatever
    /// a pass's duration: a pass that took longer than [`UP_GAP`] (1,500 schedules due at
    /// once on a loaded machine) must not turn the next pass's slots into misfires. A tick of
    /// another tenure (a new term, another process) is judged by the gap since the last tick.
    ///
    /// # Errors
    /// As [`Store::fire_schedules`].
    pub async fn fire_schedules_in(&self, tenure: uuid::Uuid) -> Result<FireOutcome, StoreError> {
        self.fire(Some(tenure)).await
    }

    async fn fire(&self, tenure: Option<uuid::Uuid>) -> Result<FireOutcome, StoreError> {
        let (now, up_since): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "insert into faultline.scheduler_clock as c (singleton, ticked_at, up_since, tenure)
             values (true, now(), now(), $2)
             on conflict (singleton) do update set
                up_since = case when c.tenure = $2
                                  or c.ticked_at >= now() - $1 * interval '1 millisecond'
                                then c.up_since else now() end,
                ticked_at = greatest(c.ticked_at, now()),
                tenure = $2
             returning now(), up_since",
        )
        .bind(super::millis(UP_GAP))
        .bind(tenure)
        .one_on(self)
        .await?;
        let listed: Vec<(String, bool)> = sqlx::query_as(
            "select name, coalesce(next_run_at <= $1, false) from faultline.schedules
             where not paused order by name",
        )
        .bind(now)
        .all_on(self)
        .await?;
        let mut outcome = FireOutcome::default();
        let due: Vec<String> = listed
            .iter()
            .filter(|(_, due)| *due)
            .map(|(name, _)| name.clone())
            .collect();
        for chunk in due.chunks(FIRE_CHUNK) {
            self.fire_chunk(chunk, up_since, &mut outcome).await?;
        }
        outcome.schedules = listed.into_iter().map(|(name, _)| name).collect();
        Ok(outcome)
    }

    /// Fire the schedules `names` (sorted: two firers lock in the same order) in one
    /// transaction.
    async fn fire_chunk(
        &self,
        names: &[String],
        up_since: DateTime<Utc>,
        outcome: &mut FireOutcome,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A firer that stalls inside this transaction must not hold the schedules' rows for
        // long: the server ends the session after 5 s idle in it (rolled back, locks freed).
        sqlx::query("set local idle_in_transaction_session_timeout = '5s'")
            .persistent(self.uses_prepared_statements())
            .execute(&mut *tx)
            .await?;
        // Locked, and read after the lock: another firer that got here first has moved
        // `considered_until` past the slots it fired.
        let rows: Vec<DueRow> = sqlx::query_as(
            "select s.*, now() as now from faultline.schedules s
             where name = any($1) and not paused
             order by name
             for update",
        )
        .bind(names)
        .persistent(self.uses_prepared_statements())
        .fetch_all(&mut *tx)
        .await?;
        let ChunkPlan {
            jobs,
            slots,
            mut progress,
        } = self.plan_chunk(&rows, up_since, outcome);
        let items = if jobs.is_empty() {
            Vec::new()
        } else {
            self.enqueue_scheduled_batch_in(&mut tx, jobs).await?
        };
        record_fired(items, slots, &mut progress, outcome);
        save_progress(&mut tx, &progress, self.uses_prepared_statements()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The jobs of the locked `rows`' due slots, each with the index in `progress` of its
    /// schedule and its slot, and every planned schedule's progress; misfires are counted into
    /// `outcome`. A slot whose job cannot be stored any more is passed over (logged).
    fn plan_chunk(
        &self,
        rows: &[DueRow],
        up_since: DateTime<Utc>,
        outcome: &mut FireOutcome,
    ) -> ChunkPlan {
        let mut chunk = ChunkPlan::default();
        for row in rows {
            let Some(plan) = plan(&row.due, row.now, up_since) else {
                continue;
            };
            if plan.missed > 0 {
                outcome.misfires.push((row.due.name.clone(), plan.missed));
            }
            for slot in plan.fire {
                let job = NewJob {
                    queue: row.due.queue.clone(),
                    priority: row.due.priority,
                    max_attempts: row.due.max_attempts,
                    idempotency_key: Some(slot_key(&row.due.name, slot)),
                    ..NewJob::new(row.due.kind.clone(), row.due.payload.clone())
                };
                // The job cannot be stored any more (a payload over a lowered limit): a
                // permanent refusal, so the slot is passed over rather than retried forever.
                if let Err(StoreError::Invalid { field, message }) = self
                    .validate(&job)
                    .and_then(|()| self.payload_text(&job).map(drop))
                {
                    tracing::warn!(schedule = %row.due.name, %slot, %field, %message,
                        "schedule's job refused; slot passed over");
                    continue;
                }
                chunk.jobs.push(job);
                chunk.slots.push((chunk.progress.len(), slot));
            }
            chunk.progress.push(Progress {
                name: row.due.name.clone(),
                through: plan.through,
                next: plan.next,
                last: None,
            });
        }
        chunk
    }
}

/// What a chunk of schedules fires: the jobs, and for each job (same order) the index of its
/// schedule in `progress` and its slot.
#[derive(Default)]
struct ChunkPlan {
    jobs: Vec<NewJob>,
    slots: Vec<(usize, DateTime<Utc>)>,
    progress: Vec<Progress>,
}

/// Record what the enqueue of a chunk's jobs gave (`items`, in the order of `slots`): created
/// jobs into `outcome.enqueued`, slots that had their job already into `outcome.already`, and
/// each slot's job as its schedule's last in `progress`.
fn record_fired(
    items: Vec<BatchItem>,
    slots: Vec<(usize, DateTime<Utc>)>,
    progress: &mut [Progress],
    outcome: &mut FireOutcome,
) {
    for (item, (i, slot)) in items.into_iter().zip(slots) {
        let id = match item {
            BatchItem::Created(job) => {
                outcome
                    .enqueued
                    .push((progress[i].name.clone(), slot, job.id));
                job.id
            }
            // The slot has its job already (a replay, or the key holds a job of the
            // schedule's earlier definition): fired before, by this or another process.
            BatchItem::Replayed(job) | BatchItem::Duplicate(job) => {
                outcome.already += 1;
                job.id
            }
            BatchItem::Conflict { existing, .. } => {
                outcome.already += 1;
                existing
            }
        };
        progress[i].last = Some((slot, id));
    }
}

/// Move each schedule's progress (considered until, next slot, last slot and job when one
/// fired) in `tx`, the transaction that holds their row locks and enqueued their jobs.
async fn save_progress(
    tx: &mut PgConnection,
    progress: &[Progress],
    persistent: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "update faultline.schedules s
             set considered_until = u.through, next_run_at = u.next,
                 last_run_at = coalesce(u.last_at, s.last_run_at),
                 last_job_id = coalesce(u.last_job, s.last_job_id)
             from unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
                         $5::uuid[]) as u(name, through, next, last_at, last_job)
             where s.name = u.name",
    )
    .bind(progress.iter().map(|p| p.name.clone()).collect::<Vec<_>>())
    .bind(progress.iter().map(|p| p.through).collect::<Vec<_>>())
    .bind(progress.iter().map(|p| p.next).collect::<Vec<_>>())
    .bind(
        progress
            .iter()
            .map(|p| p.last.map(|l| l.0))
            .collect::<Vec<_>>(),
    )
    .bind(
        progress
            .iter()
            .map(|p| p.last.map(|l| l.1))
            .collect::<Vec<_>>(),
    )
    .persistent(persistent)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Schedules fired per transaction: their jobs go in one statement.
const FIRE_CHUNK: usize = 500;

/// A schedule's progress after a pass.
struct Progress {
    name: String,
    through: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    /// The last slot fired and its job.
    last: Option<(DateTime<Utc>, JobId)>,
}

/// What one pass does with one due schedule.
struct Plan {
    /// The slots to fire, oldest first.
    fire: Vec<DateTime<Utc>>,
    /// Missed slots that get no job.
    missed: u64,
    /// The schedule is considered up to here.
    through: DateTime<Utc>,
    /// Its next slot after that.
    next: Option<DateTime<Utc>>,
}

/// The slots of `due` to fire at `now`, given that schedulers have been up since `up_since`;
/// `None` for a cron this version no longer accepts (stored by an older one: left alone, and
/// listed, so an operator can see and replace it).
fn plan(due: &Due, now: DateTime<Utc>, up_since: DateTime<Utc>) -> Option<Plan> {
    let tab = CronTab::parse(&due.cron, &due.timezone).ok()?;
    let from = due.considered_until;
    // Slots that came due before the schedulers' current up period: nothing was up to fire
    // them. `run_once` fires the latest of them; the rest are counted.
    let mut fire = Vec::new();
    let mut missed = 0u64;
    if from < up_since {
        let gone: Vec<DateTime<Utc>> = tab
            .slots(from, up_since, MAX_SLOTS)
            .into_iter()
            .filter(|s| *s < up_since)
            .collect();
        missed = gone.len() as u64;
        if missed > 0 && due.misfire == Misfire::RunOnce {
            if let Some(latest) = tab.latest_before(from, up_since) {
                fire.push(latest);
                missed -= 1;
            }
        }
    }
    // Slots that came due while schedulers were up fire, every one, however late.
    let after = from.max(up_since - chrono::Duration::microseconds(1));
    let on_time = tab.slots(after, now, MAX_SLOTS);
    // Slots beyond MAX_SLOTS in one pass wait for the next pass.
    let through = match on_time.last() {
        Some(last) if on_time.len() == MAX_SLOTS => *last,
        _ => now,
    };
    fire.extend(on_time);
    Some(Plan {
        fire,
        missed,
        through,
        next: tab.next_after(through),
    })
}

/// A schedule checked for [`Store::put_schedule`].
struct Checked {
    job: NewJob,
    payload: String,
    timezone: String,
    next: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct DueRow {
    #[sqlx(flatten)]
    due: Due,
    now: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    #[sqlx(flatten)]
    schedule: Schedule,
    created: bool,
}
