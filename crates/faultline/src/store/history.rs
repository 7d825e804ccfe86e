//! Moving finished jobs into history, and the history's partitions.
//!
//! A job leaves the live table in the statement that finishes it: a data-modifying CTE named
//! `moved` deletes it from `faultline.jobs` (under the transition's own guard), and
//! [`archive_moved!`] inserts what it returned into `faultline.job_history` and adds it to the
//! per-queue finished counts. One statement, so a job is always in exactly one of the two
//! tables, for every reader (a statement sees one snapshot).

/// The columns every move between the live table and history copies as they are (live →
/// history when a job finishes, history → live when it is retried): one list, so that a column
/// added to both tables is carried by every move once it is added here. The columns a move
/// does change (state, attempts, times, the lease's expiry, errors, result, pending
/// dependencies) are written by each move itself, next to why. The test
/// `moves::every_move_keeps_every_column` fails for a column that neither names.
macro_rules! carried_columns {
    () => {
        "id, queue, kind, payload, priority, max_attempts, timeout_ms, lease_owner, lease_token,
        idempotency_key, request_fingerprint, created_at, started_at, concurrency_key,
        depends_on, has_dependents, unique_key, unique_period_ms, traceparent"
    };
}
pub(crate) use carried_columns;

/// Every field of [`crate::Job`], for a statement that returns jobs from both tables or from a
/// CTE: `$pending` is `pending_dependencies` for a live row, `0` for a history row (history
/// has no such column: a finished job waits for nothing). `errors` as stored.
macro_rules! job_fields {
    ($pending:literal) => {
        concat!(
            "id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
            timeout_ms, lease_owner, lease_expires_at, lease_token, idempotency_key, last_error,
            errors, created_at, started_at, finished_at, updated_at, concurrency_key, result,
            depends_on, ",
            $pending,
            " as pending_dependencies, unique_key, unique_period_ms, traceparent"
        )
    };
}
pub(crate) use job_fields;

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
    insert into faultline.job_history (",
            $crate::store::history::carried_columns!(),
            ", state, attempts, next_run_at, lease_expires_at, needs_recovery, last_error, errors,
        finished_at, updated_at, result)
    select ",
            $crate::store::history::carried_columns!(),
            ", '",
            $state,
            "', attempts, next_run_at, null, needs_recovery, ",
            $last_error,
            ", ",
            $errors,
            ", now(), now(), ",
            $result,
            "
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
