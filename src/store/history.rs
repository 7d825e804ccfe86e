//! Moving finished jobs into history, and the history's partitions.
//!
//! A job leaves the live table in the statement that finishes it: a data-modifying CTE named
//! `moved` deletes it from `faultline.jobs` (under the transition's own guard), and
//! [`archive_moved!`] inserts what it returned into `faultline.job_history` and adds it to the
//! per-queue finished counts. One statement, so a job is always in exactly one of the two
//! tables, for every reader (a statement sees one snapshot).

/// The CTEs `archived` (the rows of `moved`, as `$state` in history, finished now) and
/// `counted` (added to `queue_finished_counts` on shard `$shard`, a bind parameter chosen at
/// random per statement so that concurrent completions rarely share a counter row).
/// `$last_error`, `$errors` and `$result` are SQL expressions over `moved`'s columns.
///
/// A moved job that has dependents fires `job_history_settle_dependents` (see the migration
/// `results_and_dependencies`), which settles them in this same transaction.
macro_rules! archive_moved {
    ($state:literal, $last_error:literal, $errors:literal, $shard:literal) => {
        archive_moved!($state, $last_error, $errors, $shard, "result")
    };
    ($state:literal, $last_error:literal, $errors:literal, $shard:literal, $result:literal) => {
        concat!(
            "archived as (
    insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
        max_attempts, next_run_at, timeout_ms, lease_owner, lease_expires_at, lease_token,
        needs_recovery, idempotency_key, request_fingerprint, last_error, errors, created_at,
        started_at, finished_at, updated_at, concurrency_key, result, depends_on, has_dependents,
        unique_key, unique_period_ms, traceparent)
    select id, queue, kind, payload, '",
            $state,
            "', priority, attempts, max_attempts, next_run_at,
        timeout_ms, lease_owner, null, lease_token, needs_recovery, idempotency_key,
        request_fingerprint, ",
            $last_error,
            ", ",
            $errors,
            ", created_at, started_at, now(), now(), concurrency_key, ",
            $result,
            ", depends_on, has_dependents, unique_key, unique_period_ms, traceparent
    from moved
    returning *
),
counted as (
    insert into faultline.queue_finished_counts as c (queue, state, shard, n)
    select queue, state, ",
            $shard,
            "::int2, count(*) from archived group by queue, state
    on conflict (queue, state, shard) do update set n = c.n + excluded.n
)"
        )
    };
}
pub(crate) use archive_moved;

/// Counter shards (see `queue_finished_counts`).
pub(crate) const SHARDS: i16 = 16;

/// A shard for one statement.
pub(crate) fn shard() -> i16 {
    (rand::random::<u16>() % SHARDS as u16) as i16
}
