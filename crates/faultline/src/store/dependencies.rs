//! Dependencies (docs/library.md): what an enqueue (or a retry) of a job with `depends_on` learns about
//! its parents, under the locks that keep it true until commit.
//!
//! The other half, settling a finished parent's dependents, is in the database: the trigger
//! `job_history_settle_dependents` and `faultline.cancel_dependents` (migration
//! `results_and_dependencies`), which run in the transaction that finishes the parent, whatever
//! statement finished it (completion, failure, reaper, cancel).

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::job::{JobId, JobState};

/// The parents of jobs about to be inserted (or re-queued), by id: their state now, `None` for
/// an id no job has (never existed, or pruned).
pub(crate) struct Parents {
    states: HashMap<JobId, JobState>,
}

/// What one job's parents mean for it.
pub(crate) struct Standing {
    /// Parents not yet succeeded: the job waits for this many.
    pub pending: i32,
    /// A parent that already failed or was cancelled (the job is cancelled at once).
    pub failed: Option<(JobId, JobState)>,
    /// The position of the first id that names no job.
    pub unknown: Option<usize>,
}

impl Parents {
    /// Read the parents `ids` (sorted and deduplicated here), locking every live one until the
    /// caller's transaction ends.
    ///
    /// Why the answer stays true until commit: each live parent is marked `has_dependents`
    /// under its row lock, so a transition that finishes it waits for the caller's commit, and
    /// then (seeing the mark) settles the new dependent in its own transaction (see the trigger
    /// `job_history_settle_dependents`). A parent not in the live table is read from history in
    /// a second statement, with a new snapshot: one that left the live table while the first
    /// statement waited for its lock is found there.
    pub(crate) async fn read(
        conn: &mut PgConnection,
        ids: &[JobId],
        persistent: bool,
    ) -> Result<Parents, sqlx::Error> {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Parents {
                states: HashMap::new(),
            });
        }
        // Locked, then marked only where not marked yet: a batch whose every job depends on
        // the same parents reads them once per segment, and an update each time would stack
        // one row version per segment on each parent (this transaction's own versions, which
        // nothing can prune before it ends): each read walking longer chains than the last.
        let live: Vec<(JobId, JobState, bool)> = sqlx::query_as(
            "select id, state, has_dependents from faultline.jobs
             where id = any($1)
             for update",
        )
        .bind(&ids)
        .persistent(persistent)
        .fetch_all(&mut *conn)
        .await?;
        let unmarked: Vec<JobId> = live
            .iter()
            .filter(|(_, _, marked)| !marked)
            .map(|(id, _, _)| *id)
            .collect();
        if !unmarked.is_empty() {
            sqlx::query("update faultline.jobs set has_dependents = true where id = any($1)")
                .bind(&unmarked)
                .persistent(persistent)
                .execute(&mut *conn)
                .await?;
        }
        let mut states: HashMap<JobId, JobState> =
            live.into_iter().map(|(id, state, _)| (id, state)).collect();
        let rest: Vec<JobId> = ids
            .into_iter()
            .filter(|id| !states.contains_key(id))
            .collect();
        if !rest.is_empty() {
            let finished: Vec<(JobId, JobState)> = sqlx::query_as(
                "select distinct on (id) id, state from faultline.job_history where id = any($1)",
            )
            .bind(&rest)
            .persistent(persistent)
            .fetch_all(&mut *conn)
            .await?;
            states.extend(finished);
        }
        Ok(Parents { states })
    }

    /// Add parents whose state the caller knows without reading it (jobs its own transaction
    /// created).
    pub(crate) fn extend(&mut self, known: impl IntoIterator<Item = (JobId, JobState)>) {
        self.states.extend(known);
    }

    /// What `parents` (one job's, deduplicated) mean for that job.
    pub(crate) fn standing(&self, parents: &[JobId]) -> Standing {
        let mut standing = Standing {
            pending: 0,
            failed: None,
            unknown: None,
        };
        for (i, id) in parents.iter().enumerate() {
            match self.states.get(id) {
                None => {
                    standing.unknown.get_or_insert(i);
                }
                Some(JobState::Succeeded) => {}
                Some(state @ (JobState::Failed | JobState::Cancelled)) => {
                    standing.pending += 1;
                    standing.failed.get_or_insert((*id, *state));
                }
                Some(_) => standing.pending += 1,
            }
        }
        standing
    }
}

/// Record that `children[i]` waits for `parents[i]`, for each pair whose parent is live: the
/// edge the transaction that finishes the parent consumes to settle the child (migration
/// `dependency_edges`), and mark each such parent `has_dependents` if it is not yet (a parent
/// this transaction created; [`Parents::read`] marked the others). Called in the transaction
/// that inserted (or re-queued) the children, after [`Parents::read`] locked the parents it
/// read, so a parent found live here stays live until commit.
pub(crate) async fn record_edges(
    conn: &mut PgConnection,
    parents: &[JobId],
    children: &[JobId],
    persistent: bool,
) -> Result<(), sqlx::Error> {
    if parents.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "with marked as (
             update faultline.jobs set has_dependents = true
             where id = any($1) and not has_dependents
         )
         insert into faultline.job_edges (parent, child)
         select e.parent, e.child from unnest($1::uuid[], $2::uuid[]) as e(parent, child)
         where exists (select 1 from faultline.jobs p where p.id = e.parent)
         on conflict do nothing",
    )
    .bind(parents)
    .bind(children)
    .persistent(persistent)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancel the just-inserted waiting jobs `children`, whose dependency `cause` had already
/// failed or been cancelled (`state`), naming it in their errors.
pub(crate) async fn cancel_for(
    conn: &mut PgConnection,
    children: &[JobId],
    cause: JobId,
    state: JobState,
    persistent: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("select faultline.cancel_dependents($1, $2, $3)")
        .bind(children)
        .bind(vec![cause; children.len()])
        .bind(vec![state.as_str(); children.len()])
        .persistent(persistent)
        .execute(conn)
        .await?;
    Ok(())
}
