//! Uniqueness for a period (`unique_scope: "period"`): taking the key's period.

use sqlx::PgConnection;

use crate::error::StoreError;
use crate::job::{Job, JobId};

use super::MAX_ROUNDS;

/// Open the period of uniqueness key `key` for the just-inserted job `id`, or find the job that
/// holds it: `None` when `id` now holds the key; else the holder, and `id`'s row is deleted
/// again (inside the caller's transaction, so nobody ever saw it).
///
/// Why it is safe: the upsert overwrites the key's row only when its period has ended.
/// Concurrent enqueues of one key serialise on that row (`on conflict` waits for the
/// transaction that holds it, then re-checks the `where` against the committed row), so exactly
/// one of them opens a period. The `where` reads only the row itself: a sub-select there would
/// run in the statement's older snapshot, miss the holder's just-committed job and take the
/// key from it. Whether the holder's job still exists is asked in a new statement instead, and
/// a key whose job is gone (pruned before its period ended) is taken over by compare-and-set.
pub(super) async fn take_period(
    conn: &mut PgConnection,
    key: &str,
    id: JobId,
    period_ms: i64,
    persistent: bool,
) -> Result<Option<Job>, StoreError> {
    for _ in 0..MAX_ROUNDS {
        if open_period(conn, key, id, period_ms, persistent).await? {
            return Ok(None);
        }
        match period_holder(conn, key, persistent).await? {
            Some((_, Some(job))) => {
                sqlx::query("delete from faultline.jobs where id = $1")
                    .bind(id)
                    .persistent(persistent)
                    .execute(&mut *conn)
                    .await?;
                return Ok(Some(job));
            }
            Some((gone, None)) => {
                let took = take_over(conn, key, id, period_ms, gone, persistent).await?;
                if took {
                    return Ok(None);
                }
            }
            // The row was deleted in between (its period had ended): the next upsert inserts.
            None => {}
        }
    }
    Err(StoreError::Database(sqlx::Error::Protocol(format!(
        "the holder of uniqueness key {key:?} kept changing after {MAX_ROUNDS} rounds"
    ))))
}

/// Open a period of `period_ms` of `key` for job `id` unless a period of it has not ended
/// (see [`take_period`] for why the upsert is safe). Returns whether `id` now holds the key.
async fn open_period(
    conn: &mut PgConnection,
    key: &str,
    id: JobId,
    period_ms: i64,
    persistent: bool,
) -> Result<bool, StoreError> {
    let taken: Option<JobId> = sqlx::query_scalar(
        "insert into faultline.unique_periods as u (unique_key, job_id, expires_at)
             values ($1, $2, statement_timestamp() + $3 * interval '1 millisecond')
             on conflict (unique_key) do update
                 set job_id = excluded.job_id, expires_at = excluded.expires_at
                 where u.expires_at <= statement_timestamp()
             returning job_id",
    )
    .bind(key)
    .bind(id)
    .bind(period_ms)
    .persistent(persistent)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(taken.is_some())
}

/// The job holding `key`'s period, with that job if it still exists; `None` when no row holds
/// the key any more.
async fn period_holder(
    conn: &mut PgConnection,
    key: &str,
    persistent: bool,
) -> Result<Option<(JobId, Option<Job>)>, StoreError> {
    // A new statement, so a new snapshot (READ COMMITTED): it sees the holder's row and its
    // job, committed together.
    let holder: Option<JobId> =
        sqlx::query_scalar("select job_id from faultline.unique_periods where unique_key = $1")
            .bind(key)
            .persistent(persistent)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match holder {
        Some(holder) => Some((
            holder,
            sqlx::query_as::<_, Job>("select * from faultline.all_jobs where id = $1")
                .bind(holder)
                .persistent(persistent)
                .fetch_optional(&mut *conn)
                .await?,
        )),
        None => None,
    })
}

/// Take `key`'s period over for job `id` from the job `gone`, which no longer exists
/// (compare-and-set on the holder). Returns whether `id` now holds the key.
async fn take_over(
    conn: &mut PgConnection,
    key: &str,
    id: JobId,
    period_ms: i64,
    gone: JobId,
    persistent: bool,
) -> Result<bool, StoreError> {
    let took = sqlx::query(
                    "update faultline.unique_periods
                     set job_id = $2, expires_at = statement_timestamp() + $3 * interval '1 millisecond'
                     where unique_key = $1 and job_id = $4",
    )
    .bind(key)
    .bind(id)
    .bind(period_ms)
    .bind(gone)
    .persistent(persistent)
    .execute(&mut *conn)
    .await?;
    Ok(took.rows_affected() == 1)
}
