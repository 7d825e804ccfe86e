//! Dependencies at enqueue: resolving `depends_on` (ids and a batch's indexes) to jobs, the
//! edges of a waiting job, and what happens to dependents whose parent is already finished.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::error::StoreError;
use crate::fingerprint::fingerprint;
use crate::job::{Dependency, Job, JobId, JobState, NewJob, MAX_DEPENDENCIES};
use crate::store::dependencies::{cancel_for, record_edges, Parents};

use super::rounds::enqueue_rounds;
use super::validate::Shape;
use super::{BatchItem, Notify, Prepared};

/// Enqueue jobs of which some have dependencies, in segments: a job that names an earlier job of
/// the same segment by index closes the segment, so that every index resolves to a job already
/// created (or replayed) when its dependents are inserted. A fan-in (many parents, then one
/// child) is two statements; a chain of n jobs is n.
pub(super) async fn enqueue_dependents(
    conn: &mut PgConnection,
    mut prepared: Vec<Prepared>,
    notify: Notify,
    persistent: bool,
    shape: Shape,
) -> Result<Vec<BatchItem>, StoreError> {
    let mut results: Vec<Option<BatchItem>> = vec![None; prepared.len()];
    let mut start = 0;
    for i in 0..=prepared.len() {
        let closes = i == prepared.len()
            || prepared[i]
                .job
                .depends_on
                .iter()
                .any(|d| matches!(d, Dependency::Earlier(j) if (start..i).contains(j)));
        if closes && start < i {
            resolve_dependencies(
                conn,
                &mut prepared[start..i],
                start,
                &results,
                persistent,
                shape,
            )
            .await?;
            let items = enqueue_rounds(conn, &prepared[start..i], notify, persistent, true).await?;
            let items = cancel_orphans(conn, &prepared[start..i], items, persistent).await?;
            record_waiting_edges(conn, &prepared[start..i], &items, persistent).await?;
            for (k, item) in items.into_iter().enumerate() {
                results[start + k] = Some(item);
            }
            start = i;
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// The edges of the jobs of `segment` that were created waiting (see `record_edges`).
pub(super) async fn record_waiting_edges(
    conn: &mut PgConnection,
    segment: &[Prepared],
    items: &[BatchItem],
    persistent: bool,
) -> Result<(), StoreError> {
    let (mut parents, mut children) = (Vec::new(), Vec::new());
    for (p, item) in segment.iter().zip(items) {
        if let BatchItem::Created(job) = item {
            if job.state == JobState::Waiting {
                for parent in &p.depends_on {
                    parents.push(*parent);
                    children.push(job.id);
                }
            }
        }
    }
    record_edges(conn, &parents, &children, persistent).await?;
    Ok(())
}

/// Resolve the dependencies of `segment` (whose first job is at `offset` of the request) to
/// job ids, lock and read the parents, and set each job's pending count and fingerprint.
pub(super) async fn resolve_dependencies(
    conn: &mut PgConnection,
    segment: &mut [Prepared],
    offset: usize,
    earlier: &[Option<BatchItem>],
    persistent: bool,
    shape: Shape,
) -> Result<(), StoreError> {
    for (k, p) in segment.iter_mut().enumerate() {
        p.depends_on = dependency_ids(p, offset + k, earlier, shape)?;
    }
    // Parents this batch created itself (in an earlier segment) are invisible to every other
    // transaction until commit, so nothing can finish them meanwhile: their state is the one
    // just written, and they need no lock and no read (a dense batch — each job depending on
    // the hundred before it — would otherwise lock and read the same parents once per job).
    let created: HashMap<JobId, JobState> = earlier
        .iter()
        .flatten()
        .filter_map(|item| match item {
            BatchItem::Created(job) => Some((job.id, job.state)),
            _ => None,
        })
        .collect();
    let all: Vec<JobId> = segment
        .iter()
        .flat_map(|p| p.depends_on.iter().copied())
        .filter(|id| !created.contains_key(id))
        .collect();
    let mut parents = Parents::read(conn, &all, persistent).await?;
    parents.extend(
        segment
            .iter()
            .flat_map(|p| p.depends_on.iter())
            .filter_map(|id| Some((*id, *created.get(id)?))),
    );
    for (k, p) in segment.iter_mut().enumerate() {
        let standing = parents.standing(&p.depends_on);
        if let Some(d) = standing.unknown {
            return Err(shape.name(
                offset + k,
                StoreError::invalid(
                    format!("depends_on[{d}]"),
                    format!(
                        "no job {} (it never existed, or it finished and was pruned)",
                        p.depends_on[d]
                    ),
                ),
            ));
        }
        p.pending = standing.pending;
        p.orphaned_by = standing.failed;
        p.job.depends_on = p.depends_on.iter().copied().map(Dependency::Job).collect();
        p.fingerprint = fingerprint(&p.job);
    }
    Ok(())
}

/// The ids of the dependencies of `p` (job `index` of the request), deduplicated in order:
/// an earlier job of the batch named by position is the job created or replayed for it.
///
/// # Errors
/// [`StoreError::Invalid`] naming `depends_on[d]` when that earlier job was not created (its
/// idempotency key is held by a different request).
fn dependency_ids(
    p: &Prepared,
    index: usize,
    earlier: &[Option<BatchItem>],
    shape: Shape,
) -> Result<Vec<JobId>, StoreError> {
    let mut ids = Vec::with_capacity(p.job.depends_on.len());
    for (d, dependency) in p.job.depends_on.iter().enumerate() {
        let id = match dependency {
            Dependency::Job(id) => *id,
            Dependency::Earlier(j) => match &earlier[*j] {
                Some(BatchItem::Created(job) | BatchItem::Replayed(job)) => job.id,
                _ => {
                    return Err(shape.name(
                        index,
                        StoreError::invalid(
                            format!("depends_on[{d}]"),
                            format!(
                                "names jobs[{j}], which was not created: its idempotency key \
                                 is held by a different request"
                            ),
                        ),
                    ))
                }
            },
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Cancel at once the created jobs of `segment` whose dependency had already failed or been
/// cancelled, and return the items with those jobs as they are now.
pub(super) async fn cancel_orphans(
    conn: &mut PgConnection,
    segment: &[Prepared],
    mut items: Vec<BatchItem>,
    persistent: bool,
) -> Result<Vec<BatchItem>, StoreError> {
    if segment.iter().all(|p| p.orphaned_by.is_none()) {
        return Ok(items);
    }
    let mut doomed: HashMap<JobId, Vec<JobId>> = HashMap::new();
    let mut causes: HashMap<JobId, JobState> = HashMap::new();
    let created: Vec<JobId> = items
        .iter()
        .filter_map(|item| match item {
            BatchItem::Created(job) => Some(job.id),
            _ => None,
        })
        .collect();
    for p in segment.iter().filter(|p| created.contains(&p.id)) {
        if let Some((cause, state)) = p.orphaned_by {
            doomed.entry(cause).or_default().push(p.id);
            causes.insert(cause, state);
        }
    }
    if doomed.is_empty() {
        return Ok(items);
    }
    for (cause, children) in &doomed {
        cancel_for(conn, children, *cause, causes[cause], persistent).await?;
    }
    let ids: Vec<JobId> = doomed.values().flatten().copied().collect();
    let now: HashMap<JobId, Job> =
        sqlx::query_as::<_, Job>("select * from faultline.all_jobs where id = any($1)")
            .bind(&ids)
            .persistent(persistent)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|job| (job.id, job))
            .collect();
    for item in &mut items {
        if let BatchItem::Created(job) = item {
            if let Some(cancelled) = now.get(&job.id) {
                *job = cancelled.clone();
            }
        }
    }
    Ok(items)
}

/// What is wrong with the job at index `i`'s dependencies as given (before any is looked up).
pub(super) fn dependencies_problem(job: &NewJob, i: usize, shape: Shape) -> Result<(), StoreError> {
    if job.depends_on.len() > MAX_DEPENDENCIES {
        return Err(StoreError::invalid(
            "depends_on",
            format!(
                "at most {MAX_DEPENDENCIES} dependencies, got {}",
                job.depends_on.len()
            ),
        ));
    }
    for (d, dependency) in job.depends_on.iter().enumerate() {
        match dependency {
            Dependency::Earlier(_) if shape == Shape::Single => {
                return Err(StoreError::invalid(
                    format!("depends_on[{d}]"),
                    "an index names an earlier job of the same batch (POST /v1/jobs/batch); \
                     here give a job id",
                ))
            }
            Dependency::Earlier(j) if *j >= i => {
                return Err(StoreError::invalid(
                    format!("depends_on[{d}]"),
                    format!("index {j} must name an earlier job of the batch (this is jobs[{i}])"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}
