//! Cancel or retry every job a filter matches (the dashboard's "retry all failed of this kind"):
//! the ids are read once, then each job moves through the same guarded transition as a single
//! cancel or retry, so a bulk action is exactly as safe as that many single ones.

use serde::{Deserialize, Serialize};

use super::read::{bind_filter, FILTERED};
use super::statement::OnStore;
use super::Store;
use crate::error::StoreError;
use crate::job::{JobFilter, JobId, JobState};

/// The most jobs one bulk action touches; a larger set takes several calls (each reports
/// whether more matched).
pub const MAX_BULK: u32 = 10_000;

/// What a bulk action does to each job it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Cancel: applies to waiting, queued and running jobs ([`Store::cancel`]).
    Cancel,
    /// Retry: applies to failed and cancelled jobs ([`Store::retry`]).
    Retry,
}

impl BulkAction {
    /// The states a job must be in for the action to apply to it.
    pub fn applies_to(self) -> &'static [JobState] {
        match self {
            BulkAction::Cancel => &[JobState::Waiting, JobState::Queued, JobState::Running],
            BulkAction::Retry => &[JobState::Failed, JobState::Cancelled],
        }
    }
}

/// What a bulk action found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BulkOutcome {
    /// Jobs the filter matched in a state the action applies to (at most [`MAX_BULK`]).
    pub matched: u64,
    /// Jobs the action moved (0 for a dry run). Less than `matched` when some moved on
    /// their own meanwhile or were refused (see `refused`).
    pub changed: u64,
    /// Up to 20 jobs the action could not move, each with the reason.
    pub refused: Vec<BulkRefusal>,
    /// Whether more than [`MAX_BULK`] jobs matched: run the action again for the rest.
    pub more: bool,
}

/// A job a bulk action could not move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct BulkRefusal {
    /// The job.
    pub id: JobId,
    /// Why (the single action's error).
    pub error: String,
}

impl Store {
    /// Apply `action` to every job `filter` matches in a state the action applies to, at
    /// most [`MAX_BULK`], oldest first. With `dry_run`, only count them (what a confirmation
    /// shows). Each job moves in its own transaction through [`Store::cancel`] or
    /// [`Store::retry`]: a job that moved on its own meanwhile (finished, say) is skipped,
    /// never overwritten; one that is refused (a uniqueness key held, a failed dependency) is
    /// listed in `refused` and the rest go on.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the matching jobs cannot be read or the database goes
    /// away midway (the jobs moved until then stay moved: each was its own transaction).
    pub async fn bulk(
        &self,
        action: BulkAction,
        filter: &JobFilter,
        dry_run: bool,
    ) -> Result<BulkOutcome, StoreError> {
        let ids = self.bulk_matches(action, filter).await?;
        let more = ids.len() > MAX_BULK as usize;
        let ids = &ids[..ids.len().min(MAX_BULK as usize)];
        let mut outcome = BulkOutcome {
            matched: ids.len() as u64,
            more,
            ..BulkOutcome::default()
        };
        if dry_run {
            return Ok(outcome);
        }
        for &id in ids {
            let moved = match action {
                BulkAction::Cancel => self.cancel(id).await.map(drop),
                BulkAction::Retry => self.retry(id).await.map(drop),
            };
            match moved {
                Ok(()) => outcome.changed += 1,
                // Moved on its own since it was read (finished, or gone): nothing to do.
                Err(StoreError::InvalidTransition { .. } | StoreError::NotFound(_)) => {}
                Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
                Err(refused) => {
                    if outcome.refused.len() < 20 {
                        outcome.refused.push(BulkRefusal {
                            id,
                            error: refused.to_string(),
                        });
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// The ids `action` applies to among the jobs `filter` matches, oldest first, one more
    /// than [`MAX_BULK`] at most (to tell whether more matched).
    async fn bulk_matches(
        &self,
        action: BulkAction,
        filter: &JobFilter,
    ) -> Result<Vec<JobId>, StoreError> {
        let sql = format!(
            "select id from faultline.all_jobs
             where {FILTERED} and state = any($7::text[])
             order by id limit $8"
        );
        let states: Vec<String> = action
            .applies_to()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let rows: Vec<(JobId,)> = bind_filter(sqlx::query_as(&sql), filter)
            .bind(states)
            .bind(i64::from(MAX_BULK) + 1)
            .all_on(self)
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}
