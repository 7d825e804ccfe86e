//! The insert rounds of a batch: insert, find what idempotency keys and uniqueness matched,
//! and insert again the jobs whose holder vanished in between.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::error::StoreError;
use crate::job::{Job, JobId};

use super::insert::insert;
use super::uniqueness::take_period;
use super::{BatchItem, KeyedRow, Notify, Prepared, MAX_ROUNDS};

/// Insert `prepared`, settling each taken key as a replay or a conflict (see
/// [`Store::enqueue`]).
pub(super) async fn enqueue_rounds(
    conn: &mut PgConnection,
    prepared: &[Prepared],
    notify: Notify,
    persistent: bool,
    note_lanes: bool,
) -> Result<Vec<BatchItem>, StoreError> {
    let mut results: Vec<Option<BatchItem>> = vec![None; prepared.len()];
    let mut pending: Vec<usize> = (0..prepared.len()).collect();
    for _ in 0..MAX_ROUNDS {
        if pending.is_empty() {
            break;
        }
        let keyed = insert_round(
            conn,
            prepared,
            &mut pending,
            &mut results,
            notify,
            persistent,
            note_lanes,
        )
        .await?;
        if keyed.is_empty() {
            break;
        }
        // Not inserted (or undone) means the key was taken. `on conflict do nothing` waited
        // for the holder's transaction to commit, so this new statement (a fresh snapshot
        // under READ COMMITTED) sees the holder, live or in history; if it does not, the
        // holder was deleted in between and the job goes round again.
        let holders = key_holders(conn, prepared, &keyed, persistent).await?;
        let live = live_unique_holders(conn, prepared, &keyed, &holders, persistent).await?;
        settle_taken(prepared, keyed, &holders, &live, &mut results, &mut pending);
    }
    if !pending.is_empty() {
        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "idempotency keys kept vanishing between insert and look-up after {MAX_ROUNDS} rounds"
        ))));
    }
    take_periods(conn, prepared, &mut results, persistent).await?;
    Ok(results.into_iter().flatten().collect())
}

/// One insert of the `pending` jobs (drained): each one inserted and not shadowed by history
/// gets [`BatchItem::Created`] in `results`. Returns the indices of the others, whose key (an
/// idempotency key or a uniqueness key) was taken.
async fn insert_round(
    conn: &mut PgConnection,
    prepared: &[Prepared],
    pending: &mut Vec<usize>,
    results: &mut [Option<BatchItem>],
    notify: Notify,
    persistent: bool,
    note_lanes: bool,
) -> Result<Vec<usize>, StoreError> {
    let inserted = insert(
        conn,
        pending.iter().map(|&i| &prepared[i]),
        notify,
        persistent,
        note_lanes,
    )
    .await?;
    let shadowed = shadowed_by_history(conn, &inserted, persistent).await?;
    let mut by_id: HashMap<JobId, Job> = inserted
        .into_iter()
        .filter(|job| !shadowed.contains(&job.id))
        .map(|job| (job.id, job))
        .collect();
    let mut keyed = Vec::new();
    for i in pending.drain(..) {
        match by_id.remove(&prepared[i].id) {
            Some(job) => results[i] = Some(BatchItem::Created(job)),
            None => keyed.push(i),
        }
    }
    Ok(keyed)
}

/// The jobs (live or in history) holding the idempotency keys of the `keyed` jobs, by key.
async fn key_holders(
    conn: &mut PgConnection,
    prepared: &[Prepared],
    keyed: &[usize],
    persistent: bool,
) -> Result<HashMap<String, KeyedRow>, StoreError> {
    let keys: Vec<String> = keyed
        .iter()
        .filter_map(|&i| prepared[i].job.idempotency_key.clone())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(sqlx::query_as::<_, KeyedRow>(
        "select * from faultline.all_jobs where idempotency_key = any($1)",
    )
    .bind(&keys)
    .persistent(persistent)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter_map(|row| Some((row.job.idempotency_key.clone()?, row)))
    .collect())
}

/// The live jobs holding the uniqueness keys (active scope) of the `keyed` jobs whose
/// idempotency key no job in `holders` holds, by uniqueness key.
async fn live_unique_holders(
    conn: &mut PgConnection,
    prepared: &[Prepared],
    keyed: &[usize],
    holders: &HashMap<String, KeyedRow>,
    persistent: bool,
) -> Result<HashMap<String, Job>, StoreError> {
    // The idempotency key is settled first: a replay is a replay, whatever its scope.
    let unique_keys: Vec<&str> = keyed
        .iter()
        .map(|&i| &prepared[i])
        .filter(|p| {
            p.unique_while_active()
                && p.job
                    .idempotency_key
                    .as_ref()
                    .is_none_or(|key| !holders.contains_key(key))
        })
        .filter_map(|p| p.unique_key.as_deref())
        .collect();
    if unique_keys.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(sqlx::query_as::<_, Job>(
        "select * from faultline.jobs
                 where unique_key = any($1) and unique_period_ms is null",
    )
    .bind(&unique_keys)
    .persistent(persistent)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter_map(|job| Some((job.unique_key.clone()?, job)))
    .collect())
}

/// Settle each `keyed` job against the holders found: a replay (same request), a conflict
/// (another request) or a duplicate (uniqueness) goes to `results`; a job whose holder is gone
/// goes back to `pending` for another round.
fn settle_taken(
    prepared: &[Prepared],
    keyed: Vec<usize>,
    holders: &HashMap<String, KeyedRow>,
    live: &HashMap<String, Job>,
    results: &mut [Option<BatchItem>],
    pending: &mut Vec<usize>,
) {
    for i in keyed {
        let p = &prepared[i];
        let key = p.job.idempotency_key.clone();
        match key.as_ref().and_then(|key| holders.get(key)) {
            Some(holder) if holder.request_fingerprint.as_deref() == Some(&p.fingerprint) => {
                results[i] = Some(BatchItem::Replayed(holder.job.clone()))
            }
            Some(holder) => {
                results[i] = Some(BatchItem::Conflict {
                    key: key.unwrap_or_default(),
                    existing: holder.job.id,
                })
            }
            None => match p.unique_key.as_ref().and_then(|key| live.get(key)) {
                Some(holder) => results[i] = Some(BatchItem::Duplicate(holder.clone())),
                None => pending.push(i),
            },
        }
    }
}

/// Take the period of uniqueness of every created job with a period scope, in input order;
/// a job whose period another job holds becomes [`BatchItem::Duplicate`] of that job.
async fn take_periods(
    conn: &mut PgConnection,
    prepared: &[Prepared],
    results: &mut [Option<BatchItem>],
    persistent: bool,
) -> Result<(), StoreError> {
    for (p, result) in prepared.iter().zip(results.iter_mut()) {
        if let (Some(key), Some(period_ms), Some(BatchItem::Created(job))) =
            (&p.unique_key, p.unique_period_ms, result.as_ref())
        {
            if let Some(holder) = take_period(conn, key, job.id, period_ms, persistent).await? {
                *result = Some(BatchItem::Duplicate(holder));
            }
        }
    }
    Ok(())
}

/// The just-inserted keyed jobs whose key a job in history holds; those rows are deleted again
/// (inside the caller's transaction, so nobody ever saw them) and the caller treats their key as
/// taken.
///
/// Why after the insert and not before: the live table's unique index settles races between
/// enqueues, but a job can leave the live table for history while an enqueue of its key runs.
/// Checked before the insert, the finishing job could still be live (and not yet in history) at
/// the check, then gone from the live table at the insert: two jobs with one key. Checked after,
/// in a new statement: if the finishing job was still live when the insert ran, the insert
/// waited for its transaction (the unique index) and this later statement sees it in history;
/// if it was already in history, so much the better.
pub(super) async fn shadowed_by_history(
    conn: &mut PgConnection,
    inserted: &[Job],
    persistent: bool,
) -> Result<Vec<JobId>, sqlx::Error> {
    let keyed: Vec<(JobId, &str)> = inserted
        .iter()
        .filter_map(|job| Some((job.id, job.idempotency_key.as_deref()?)))
        .collect();
    if keyed.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&str> = keyed.iter().map(|(_, key)| *key).collect();
    let taken: Vec<String> = sqlx::query_scalar(
        "select idempotency_key from faultline.job_history where idempotency_key = any($1)",
    )
    .bind(&keys)
    .persistent(persistent)
    .fetch_all(&mut *conn)
    .await?;
    let shadowed: Vec<JobId> = keyed
        .iter()
        .filter(|(_, key)| taken.iter().any(|t| t == key))
        .map(|(id, _)| *id)
        .collect();
    if !shadowed.is_empty() {
        sqlx::query("delete from faultline.jobs where id = any($1)")
            .bind(&shadowed)
            .persistent(persistent)
            .execute(&mut *conn)
            .await?;
    }
    Ok(shadowed)
}
