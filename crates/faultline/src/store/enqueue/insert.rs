//! The insert statement itself (one statement per round, in its idempotency and wake-up
//! variants), and its text.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::job::{Job, JobId};
use crate::store::JOB_CHANNEL;

use super::{Notify, Prepared};

/// Insert the jobs in one statement and return the rows actually inserted; a job whose key is
/// taken is skipped (`on conflict do nothing`), including a second job with the same key in the
/// same batch. With [`Notify::InTransaction`], notifies each queue that got an eligible job;
/// Postgres delivers the notification at commit, so a rolled-back enqueue wakes nobody.
pub(super) async fn insert<'a>(
    conn: &mut PgConnection,
    jobs: impl Iterator<Item = &'a Prepared>,
    notify: Notify,
    persistent: bool,
    note_lanes: bool,
) -> Result<Vec<Job>, sqlx::Error> {
    let c = Columns::of(jobs);
    mark_keyed(conn, &c.queues, &c.concurrency_keys, persistent).await?;
    let sql = insert_statement(notify, c.unique_active, note_lanes);
    let query = sqlx::query_as::<_, Job>(sql)
        .bind(c.ids)
        .bind(c.queues)
        .bind(c.kinds)
        .bind(c.payloads)
        .bind(c.priorities)
        .bind(c.max_attempts)
        .bind(c.run_ats)
        .bind(c.keys)
        .bind(c.fingerprints)
        .bind(c.timeouts)
        .bind(c.concurrency_keys)
        .bind(c.pending)
        .bind(c.depends_on)
        .bind(c.unique_keys)
        .bind(c.unique_periods)
        .bind(c.traceparents);
    let query = match notify {
        Notify::InTransaction => query.bind(JOB_CHANNEL),
        Notify::AfterCommit => query,
    };
    query.persistent(persistent).fetch_all(conn).await
}

/// The insert statement for a batch: with or without the in-transaction `NOTIFY`, every unique
/// index as arbiter or the idempotency index alone, registering its lanes or not.
fn insert_statement(notify: Notify, unique_active: bool, note_lanes: bool) -> &'static str {
    // Only a batch with a job unique while active names no conflict target, so that every
    // other insert keeps the idempotency index as its only arbiter (no extra probe per row).
    match (notify, unique_active, note_lanes) {
        (Notify::InTransaction, false, false) => INSERT_AND_NOTIFY,
        (Notify::AfterCommit, false, false) => INSERT,
        (Notify::InTransaction, true, false) => INSERT_UNIQUE_AND_NOTIFY,
        (Notify::AfterCommit, true, false) => INSERT_UNIQUE,
        (Notify::InTransaction, false, true) => NOTING_INSERT_AND_NOTIFY,
        (Notify::AfterCommit, false, true) => NOTING_INSERT,
        (Notify::InTransaction, true, true) => NOTING_INSERT_UNIQUE_AND_NOTIFY,
        (Notify::AfterCommit, true, true) => NOTING_INSERT_UNIQUE,
    }
}

/// The insert's parameters: one array per column (`$1` to `$16`, in that order), one element
/// per job in input order; and whether any job is unique while active.
struct Columns<'a> {
    ids: Vec<JobId>,
    queues: Vec<&'a str>,
    kinds: Vec<&'a str>,
    payloads: Vec<&'a str>,
    priorities: Vec<i16>,
    max_attempts: Vec<i32>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    keys: Vec<Option<&'a str>>,
    fingerprints: Vec<&'a [u8]>,
    timeouts: Vec<Option<i32>>,
    concurrency_keys: Vec<Option<&'a str>>,
    depends_on: Vec<Option<String>>,
    pending: Vec<Option<i32>>,
    unique_keys: Vec<Option<&'a str>>,
    unique_periods: Vec<Option<i64>>,
    unique_active: bool,
    traceparents: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    /// The columns of `jobs`.
    fn of(jobs: impl Iterator<Item = &'a Prepared>) -> Self {
        let mut c = Columns {
            ids: Vec::new(),
            queues: Vec::new(),
            kinds: Vec::new(),
            payloads: Vec::new(),
            priorities: Vec::new(),
            max_attempts: Vec::new(),
            run_ats: Vec::new(),
            keys: Vec::new(),
            fingerprints: Vec::new(),
            timeouts: Vec::new(),
            concurrency_keys: Vec::new(),
            depends_on: Vec::new(),
            pending: Vec::new(),
            unique_keys: Vec::new(),
            unique_periods: Vec::new(),
            unique_active: false,
            traceparents: Vec::new(),
        };
        for p in jobs {
            c.ids.push(p.id);
            c.queues.push(p.job.queue.as_str());
            c.kinds.push(p.job.kind.as_str());
            c.payloads.push(p.payload.as_str());
            c.priorities.push(p.job.priority);
            c.max_attempts.push(p.job.max_attempts);
            c.run_ats.push(p.job.run_at);
            c.keys.push(p.job.idempotency_key.as_deref());
            c.fingerprints.push(p.fingerprint.as_slice());
            c.timeouts.push(p.job.timeout_ms);
            c.concurrency_keys.push(p.job.concurrency_key.as_deref());
            c.depends_on.push(depends_on_literal(&p.depends_on));
            c.pending.push((p.pending > 0).then_some(p.pending));
            c.unique_keys.push(p.unique_key.as_deref());
            c.unique_periods.push(p.unique_period_ms);
            c.unique_active |= p.unique_while_active();
            c.traceparents.push(p.job.traceparent.as_deref());
        }
        c
    }
}

/// Mark keyed every queue that gets a job with a concurrency key, before the insert on the same
/// connection: whether it commits now (autocommit) or with the caller's transaction, the mark is
/// visible no later than the job, so a claim that can see the job takes it under the queue's
/// lock (`faultline.claim_limited`). A statement of its own, run only for keyed jobs, so that
/// enqueues without a key pay nothing for it; the NOT EXISTS skips the upsert (and its row lock)
/// once the queue is marked.
async fn mark_keyed(
    conn: &mut PgConnection,
    queues: &[&str],
    keys: &[Option<&str>],
    persistent: bool,
) -> Result<(), sqlx::Error> {
    let mut keyed: Vec<&str> = queues
        .iter()
        .zip(keys)
        .filter(|(_, key)| key.is_some())
        .map(|(queue, _)| *queue)
        .collect();
    if keyed.is_empty() {
        return Ok(());
    }
    keyed.sort_unstable();
    keyed.dedup();
    sqlx::query(
        "insert into faultline.queue_settings as s (queue, keyed)
         select q, true from unnest($1::text[]) q
         where not exists (select 1 from faultline.queue_settings k where k.queue = q and k.keyed)
         on conflict (queue) do update set keyed = true, updated_at = now()",
    )
    .bind(keyed)
    .persistent(persistent)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job's dependencies as one element of a `text[]`: a Postgres array literal, cast back to
/// `uuid[]` in the statement (an array of arrays must be rectangular; dependency lists are
/// not). `None` (a NULL element) for none.
pub(super) fn depends_on_literal(ids: &[JobId]) -> Option<String> {
    if ids.is_empty() {
        return None;
    }
    let ids: Vec<String> = ids.iter().map(JobId::to_string).collect();
    Some(format!("{{{}}}", ids.join(",")))
}

/// The rows to insert, from one array per column (one round trip for any batch size), in
/// input order; with `noted_lanes!()` as `$lanes`, the batch's lanes registered too. Shared by
/// every statement below.
macro_rules! input_cte {
    ($lanes:expr) => {
        concat!(
            "with input as (
    select *
    from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int4[],
                $7::timestamptz[], $8::text[], $9::bytea[], $10::int4[], $11::text[],
                $12::int4[], $13::text[], $14::text[], $15::int8[],
                $16::text[])
         with ordinality
         as t(id, queue, kind, payload, priority, max_attempts, run_at, idempotency_key,
              fingerprint, timeout_ms, concurrency_key, pending, depends_on, unique_key,
              unique_period_ms, traceparent, ord)
)",
            $lanes
        )
    };
}

/// Every lane (queue, priority) of the batch made known to the claims (see the migration
/// `lane_marks`); in key order, so that two batches bringing the same new lanes wait for each
/// other in one order. A lane that exists costs an index probe and writes nothing; a store
/// leaves this out once its lanes are known (`KnownLanes`).
macro_rules! noted_lanes {
    () => {
        ",
noted_lanes as (
    insert into faultline.lanes (queue, priority)
    select distinct queue, priority from input order by 1, 2
    on conflict do nothing
)"
    };
}

/// The insert itself, shared by every statement below: rows whose key is taken are skipped
/// (`$conflict`: the idempotency index alone, or every unique index).
macro_rules! insert_rows {
    ($conflict:expr) => {
        concat!(
            "insert into faultline.jobs (id, queue, kind, payload, priority, max_attempts, next_run_at,
                            idempotency_key, request_fingerprint, timeout_ms, concurrency_key,
                            state, pending_dependencies, depends_on, unique_key, unique_period_ms,
                            traceparent, eligible_at)
select id, queue, kind, payload::json, priority, max_attempts, coalesce(run_at, now()),
       idempotency_key, fingerprint, timeout_ms, concurrency_key,
       case when pending > 0 then 'waiting' else 'queued' end, coalesce(pending, 0),
       coalesce(depends_on::uuid[], '{}'), unique_key, unique_period_ms, traceparent,
       -- A queued job enters its lane at the statement's one reading of the clock, taken while
       -- the statement holds its lock on the table (see the migrations `lane_marks` and
       -- `lane_clock_by_table_lock`); a waiting one when it is promoted.
       case when pending > 0 then null
            else greatest(coalesce(run_at, now()), (select clock_timestamp())) end
from input
order by ord
on conflict ",
            $conflict,
            " do nothing
returning *"
        )
    };
}

/// The conflict target of an insert without jobs unique while active.
macro_rules! on_idempotency_key {
    () => {
        "(idempotency_key) where idempotency_key is not null"
    };
}

/// The insert with an in-transaction `NOTIFY` per queue that got an eligible job.
macro_rules! insert_and_notify {
    ($conflict:expr, $lanes:expr) => {
        concat!(
            input_cte!($lanes),
            ",
inserted as (
",
            insert_rows!($conflict),
            "
),
-- A data-modifying CTE always runs, a plain one only when referenced: the scalar sub-select in
-- the final WHERE is that reference. pg_notify folds repeats of one queue in a transaction.
notified as (
    select pg_notify($17, q.queue)
    from (select distinct queue from inserted where state = 'queued' and next_run_at <= now()) q
)
select * from inserted where (select count(*) from notified) >= 0"
        )
    };
}

/// The insert alone.
pub(super) const INSERT: &str = concat!(input_cte!(""), "\n", insert_rows!(on_idempotency_key!()));
/// The insert, with a `NOTIFY`.
pub(super) const INSERT_AND_NOTIFY: &str = insert_and_notify!(on_idempotency_key!(), "");
/// The insert of a batch with a job unique while active: any unique index is an arbiter (the
/// idempotency key's and `jobs_unique_active_idx`).
pub(super) const INSERT_UNIQUE: &str = concat!(input_cte!(""), "\n", insert_rows!(""));
/// The same, with a `NOTIFY`.
pub(super) const INSERT_UNIQUE_AND_NOTIFY: &str = insert_and_notify!("", "");
/// The four above, registering the batch's lanes.
pub(super) const NOTING_INSERT: &str = concat!(
    input_cte!(noted_lanes!()),
    "\n",
    insert_rows!(on_idempotency_key!())
);
/// See [`NOTING_INSERT`].
pub(super) const NOTING_INSERT_AND_NOTIFY: &str =
    insert_and_notify!(on_idempotency_key!(), noted_lanes!());
/// See [`NOTING_INSERT`].
pub(super) const NOTING_INSERT_UNIQUE: &str =
    concat!(input_cte!(noted_lanes!()), "\n", insert_rows!(""));
/// See [`NOTING_INSERT`].
pub(super) const NOTING_INSERT_UNIQUE_AND_NOTIFY: &str = insert_and_notify!("", noted_lanes!());
