//! (new) → queued: enqueue one job or a batch, with idempotency keys.

use std::collections::HashMap;

use sqlx::{Connection, PgConnection};

use super::dependencies::{cancel_for, record_edges, Parents};
use super::{Store, JOB_CHANNEL};
use crate::error::StoreError;
use crate::fingerprint::{derived_unique_key, fingerprint};
use crate::job::{
    Dependency, Job, JobId, JobState, NewJob, UniqueScope, MAX_DEPENDENCIES, MAX_UNIQUE_PERIOD_MS,
};
use crate::job_args::IntoNewJob;
use crate::names::{label_problem, name_problem};
use crate::schedule::SLOT_KEY_PREFIX;
use crate::time_range::time_problem;

/// The result of enqueueing one job.
#[derive(Clone, Debug, PartialEq)]
pub enum Enqueued {
    /// A new job was created.
    Created(Job),
    /// A job with the same idempotency key and the same request already existed; it is returned
    /// unchanged and nothing was written.
    Replayed(Job),
    /// A job with the same uniqueness key exists in the job's scope (SPEC §5 `unique_scope`); it
    /// is returned unchanged and nothing was written.
    Duplicate(Job),
}

impl Enqueued {
    /// The job, new or existing.
    pub fn job(&self) -> &Job {
        match self {
            Enqueued::Created(job) | Enqueued::Replayed(job) | Enqueued::Duplicate(job) => job,
        }
    }

    /// The job, new or existing.
    pub fn into_job(self) -> Job {
        match self {
            Enqueued::Created(job) | Enqueued::Replayed(job) | Enqueued::Duplicate(job) => job,
        }
    }

    /// Whether the job already existed under the same idempotency key.
    pub fn was_replayed(&self) -> bool {
        matches!(self, Enqueued::Replayed(_))
    }

    /// Whether a job with the same uniqueness key already existed in its scope.
    pub fn was_duplicate(&self) -> bool {
        matches!(self, Enqueued::Duplicate(_))
    }
}

/// The result for one job of a batch, in the order the jobs were given.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchItem {
    /// A new job was created.
    Created(Job),
    /// Same key and same request as an existing job: that job, unchanged.
    Replayed(Job),
    /// Same uniqueness key as a job in the scope (possibly an earlier job of the same batch):
    /// that job, unchanged; nothing was written for this one.
    Duplicate(Job),
    /// The key is taken by a job created from a different request; nothing was written for it.
    Conflict {
        /// The key.
        key: String,
        /// The job that holds it.
        existing: JobId,
    },
}

/// One validated job ready for the insert.
struct Prepared {
    id: JobId,
    job: NewJob,
    /// The payload's JSON text, as stored.
    payload: String,
    fingerprint: Vec<u8>,
    /// The parents, resolved to ids and deduplicated (see `dependencies.rs`).
    depends_on: Vec<JobId>,
    /// How many of them have not succeeded: the job starts `waiting` when any.
    pending: i32,
    /// A parent that had already failed or been cancelled: the job is cancelled once created.
    orphaned_by: Option<(JobId, JobState)>,
    /// The uniqueness key as stored (given or derived), and the period (`None`: active scope).
    unique_key: Option<String>,
    unique_period_ms: Option<i64>,
}

impl Prepared {
    /// Unique while live: settled by the live table's partial unique index.
    fn unique_while_active(&self) -> bool {
        self.unique_key.is_some() && self.unique_period_ms.is_none()
    }
}

// A job inserted, or found by its key, with the fingerprint of the request that created it.
#[derive(sqlx::FromRow)]
struct KeyedRow {
    #[sqlx(flatten)]
    job: Job,
    request_fingerprint: Option<Vec<u8>>,
}

/// How often a key is looked for again when its holder vanished between our insert and our
/// look-up (pruned or deleted concurrently): each round inserts again, so this is only a bound
/// on a pathological race, never reached in practice.
const MAX_ROUNDS: usize = 3;

impl Store {
    /// Enqueue `job` (a [`NewJob`], or a typed [`crate::JobArgs`] value) on the store's pool.
    ///
    /// With an idempotency key: if a job with that key exists and was created from the same
    /// request, it is returned as [`Enqueued::Replayed`] and nothing is written; if it was
    /// created from a different request, the call fails with
    /// [`StoreError::IdempotencyConflict`]. Races between submitters are settled by the unique
    /// index, not by a read-then-write.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the field when the job is out of bounds (nothing written),
    /// [`StoreError::IdempotencyConflict`], or [`StoreError::Database`].
    pub async fn enqueue(&self, job: impl IntoNewJob) -> Result<Enqueued, StoreError> {
        let job = job.into_new_job()?;
        let mut conn = self.pool.acquire().await?;
        let key = job.idempotency_key.clone();
        // One autocommit statement without a key; with one, a short transaction (the insert,
        // the check against history, a look-up if the key was taken): committed when this
        // returns.
        let items = self
            .enqueue_rows(
                &mut conn,
                vec![job],
                Notify::AfterCommit,
                Shape::Single,
                Origin::Client,
            )
            .await?;
        self.notify_created(&items);
        single(items, key)
    }

    /// Enqueue `job` on the caller's connection, typically inside the caller's own transaction
    /// (`store.enqueue_in(&mut tx, job)`): the job exists only if that transaction commits, and
    /// workers are notified only then.
    ///
    /// # Errors
    /// As [`Store::enqueue`].
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        job: impl IntoNewJob,
    ) -> Result<Enqueued, StoreError> {
        let job = job.into_new_job()?;
        let key = job.idempotency_key.clone();
        let items = self
            .enqueue_rows(
                conn,
                vec![job],
                Notify::InTransaction,
                Shape::Single,
                Origin::Client,
            )
            .await?;
        single(items, key)
    }

    /// [`Store::enqueue_batch_in`] for the scheduler: the one caller allowed keys in the
    /// reserved `schedule:` namespace (its slot keys, see `schedule.rs`).
    pub(crate) async fn enqueue_scheduled_batch_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<BatchItem>, StoreError> {
        self.enqueue_rows(
            conn,
            jobs,
            Notify::InTransaction,
            Shape::Batch,
            Origin::Scheduler,
        )
        .await
    }

    /// Enqueue many jobs in one statement on the store's pool. Jobs without a key, or with a
    /// fresh one, are created; each key already taken yields [`BatchItem::Replayed`] or
    /// [`BatchItem::Conflict`] for that job alone. Results are in input order.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] (naming the job's index and field) if any job is out of bounds,
    /// in which case nothing is written; [`StoreError::Database`].
    pub async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<BatchItem>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let items = self
            .enqueue_rows(
                &mut tx,
                jobs,
                Notify::AfterCommit,
                Shape::Batch,
                Origin::Client,
            )
            .await?;
        tx.commit().await?;
        self.notify_created(&items);
        Ok(items)
    }

    /// After the enqueue committed: wake workers for the created jobs that are eligible now,
    /// and remember their lanes as registered.
    fn notify_created(&self, items: &[BatchItem]) {
        self.known_lanes
            .learn(items.iter().filter_map(|item| match item {
                BatchItem::Created(job) => Some((job.queue.as_str(), job.priority)),
                _ => None,
            }));
        let queues = items.iter().filter_map(|item| match item {
            BatchItem::Created(job)
                if job.state == JobState::Queued && job.next_run_at <= job.created_at =>
            {
                Some(job.queue.as_str())
            }
            _ => None,
        });
        self.notifier.notify(&self.pool, self.persistent(), queues);
    }

    /// [`Store::enqueue_batch`] on the caller's connection or transaction.
    ///
    /// # Errors
    /// As [`Store::enqueue_batch`].
    pub async fn enqueue_batch_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<BatchItem>, StoreError> {
        self.enqueue_rows(
            conn,
            jobs,
            Notify::InTransaction,
            Shape::Batch,
            Origin::Client,
        )
        .await
    }

    async fn enqueue_rows(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
        notify: Notify,
        shape: Shape,
        origin: Origin,
    ) -> Result<Vec<BatchItem>, StoreError> {
        // With traces on, a job without a trace context continues the caller's.
        #[cfg(feature = "otel")]
        let current = crate::otel::current_traceparent();
        let prepared = jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                #[cfg(feature = "otel")]
                let job = NewJob {
                    traceparent: job.traceparent.or_else(|| current.clone()),
                    ..job
                };
                let checked = self
                    .validate(&job)
                    .and_then(|()| origin.key_problem(&job))
                    .and_then(|()| dependencies_problem(&job, i, shape))
                    .and_then(|()| self.payload_text(&job));
                let payload = checked.map_err(|e| shape.name(i, e))?;
                let (unique_key, unique_period_ms) = match &job.unique {
                    None => (None, None),
                    Some(unique) => (
                        Some(
                            unique
                                .key
                                .clone()
                                .unwrap_or_else(|| derived_unique_key(&job)),
                        ),
                        match unique.scope {
                            UniqueScope::Active => None,
                            UniqueScope::Period { period_ms } => Some(period_ms),
                        },
                    ),
                };
                Ok(Prepared {
                    id: JobId::new(),
                    fingerprint: fingerprint(&job),
                    payload,
                    job,
                    depends_on: Vec::new(),
                    pending: 0,
                    orphaned_by: None,
                    unique_key,
                    unique_period_ms,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // A lane registered by a committed statement stays registered (lanes are never
        // deleted): a batch whose lanes this store has seen committed skips the registration.
        let note_lanes = !self.known_lanes.knows_all(
            prepared
                .iter()
                .map(|p| (p.job.queue.as_str(), p.job.priority)),
        );
        if prepared.iter().any(|p| !p.job.depends_on.is_empty()) {
            // Parents are locked and read in the transaction that inserts their dependents.
            let mut tx = conn.begin().await?;
            let items =
                enqueue_dependents(&mut tx, prepared, notify, self.persistent(), shape).await?;
            tx.commit().await?;
            return Ok(items);
        }

        // Keyed jobs are enqueued in a transaction of their own (a savepoint inside the
        // caller's): a key won in the live table must be checked against history before anyone
        // can see the new job (see `shadowed_by_history`).
        // Behind PgBouncer, every statement runs in a transaction (see `exec.rs`).
        // So are jobs with a uniqueness key: a duplicate found after the insert is undone there.
        let keyed = prepared
            .iter()
            .any(|p| p.job.idempotency_key.is_some() || p.unique_key.is_some());
        if !self.persistent() || keyed {
            let mut tx = conn.begin().await?;
            let items =
                enqueue_rounds(&mut tx, &prepared, notify, self.persistent(), note_lanes).await?;
            tx.commit().await?;
            Ok(items)
        } else {
            enqueue_rounds(conn, &prepared, notify, self.persistent(), note_lanes).await
        }
    }
}

/// Enqueue jobs of which some have dependencies, in segments: a job that names an earlier job of
/// the same segment by index closes the segment, so that every index resolves to a job already
/// created (or replayed) when its dependents are inserted. A fan-in (many parents, then one
/// child) is two statements; a chain of n jobs is n.
async fn enqueue_dependents(
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
async fn record_waiting_edges(
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
async fn resolve_dependencies(
    conn: &mut PgConnection,
    segment: &mut [Prepared],
    offset: usize,
    earlier: &[Option<BatchItem>],
    persistent: bool,
    shape: Shape,
) -> Result<(), StoreError> {
    for (k, p) in segment.iter_mut().enumerate() {
        let mut ids = Vec::with_capacity(p.job.depends_on.len());
        for (d, dependency) in p.job.depends_on.iter().enumerate() {
            let id = match dependency {
                Dependency::Job(id) => *id,
                Dependency::Earlier(j) => match &earlier[*j] {
                    Some(BatchItem::Created(job) | BatchItem::Replayed(job)) => job.id,
                    _ => {
                        return Err(shape.name(
                            offset + k,
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
        p.depends_on = ids;
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

/// Cancel at once the created jobs of `segment` whose dependency had already failed or been
/// cancelled, and return the items with those jobs as they are now.
async fn cancel_orphans(
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

/// Insert `prepared`, settling each taken key as a replay or a conflict (see
/// [`Store::enqueue`]).
async fn enqueue_rounds(
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
        if keyed.is_empty() {
            break;
        }
        // Not inserted (or undone) means the key was taken. `on conflict do nothing` waited
        // for the holder's transaction to commit, so this new statement (a fresh snapshot
        // under READ COMMITTED) sees the holder, live or in history; if it does not, the
        // holder was deleted in between and the job goes round again.
        let keys: Vec<String> = keyed
            .iter()
            .filter_map(|&i| prepared[i].job.idempotency_key.clone())
            .collect();
        let holders: HashMap<String, KeyedRow> = if keys.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, KeyedRow>(
                "select * from faultline.all_jobs where idempotency_key = any($1)",
            )
            .bind(&keys)
            .persistent(persistent)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .filter_map(|row| Some((row.job.idempotency_key.clone()?, row)))
            .collect()
        };
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
        let live: HashMap<String, Job> = if unique_keys.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, Job>(
                "select * from faultline.jobs
                 where unique_key = any($1) and unique_period_ms is null",
            )
            .bind(&unique_keys)
            .persistent(persistent)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .filter_map(|job| Some((job.unique_key.clone()?, job)))
            .collect()
        };
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
    if !pending.is_empty() {
        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "idempotency keys kept vanishing between insert and look-up after {MAX_ROUNDS} rounds"
        ))));
    }
    for (p, result) in prepared.iter().zip(results.iter_mut()) {
        if let (Some(key), Some(period_ms), Some(BatchItem::Created(job))) =
            (&p.unique_key, p.unique_period_ms, result.as_ref())
        {
            if let Some(holder) = take_period(conn, key, job.id, period_ms, persistent).await? {
                *result = Some(BatchItem::Duplicate(holder));
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

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
async fn take_period(
    conn: &mut PgConnection,
    key: &str,
    id: JobId,
    period_ms: i64,
    persistent: bool,
) -> Result<Option<Job>, StoreError> {
    for _ in 0..MAX_ROUNDS {
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
        if taken.is_some() {
            return Ok(None);
        }
        // A new statement, so a new snapshot (READ COMMITTED): it sees the holder's row and its
        // job, committed together.
        let holder: Option<JobId> =
            sqlx::query_scalar("select job_id from faultline.unique_periods where unique_key = $1")
                .bind(key)
                .persistent(persistent)
                .fetch_optional(&mut *conn)
                .await?;
        let holder = match holder {
            Some(holder) => Some((
                holder,
                sqlx::query_as::<_, Job>("select * from faultline.all_jobs where id = $1")
                    .bind(holder)
                    .persistent(persistent)
                    .fetch_optional(&mut *conn)
                    .await?,
            )),
            None => None,
        };
        match holder {
            Some((_, Some(job))) => {
                sqlx::query("delete from faultline.jobs where id = $1")
                    .bind(id)
                    .persistent(persistent)
                    .execute(&mut *conn)
                    .await?;
                return Ok(Some(job));
            }
            Some((gone, None)) => {
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
                if took.rows_affected() == 1 {
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

impl Store {
    /// Check a job against the bounds the database also enforces, and against what a worker
    /// can serve, so the caller gets an error naming the field rather than a constraint
    /// violation (or a job that no worker could ever take).
    pub(crate) fn validate(&self, job: &NewJob) -> Result<(), StoreError> {
        if let Some(problem) = name_problem(&job.kind) {
            return Err(StoreError::invalid("kind", problem));
        }
        if let Some(problem) = name_problem(&job.queue) {
            return Err(StoreError::invalid("queue", problem));
        }
        if let Some(key) = &job.idempotency_key {
            if let Some(problem) = label_problem(key) {
                return Err(StoreError::invalid("idempotency_key", problem));
            }
        }
        if job.kind == "webhook" {
            if let Some((field, message)) =
                crate::webhook_headers::payload_problem(&job.payload.to_value())
            {
                return Err(StoreError::invalid(field, message));
            }
        }
        if let Some(key) = &job.concurrency_key {
            if let Some(problem) = label_problem(key) {
                return Err(StoreError::invalid("concurrency_key", problem));
            }
        }
        if job.max_attempts < 1 {
            return Err(StoreError::invalid(
                "max_attempts",
                format!("must be at least 1, got {}", job.max_attempts),
            ));
        }
        if let Some(timeout) = job.timeout_ms {
            if timeout < 1 {
                return Err(StoreError::invalid(
                    "timeout_ms",
                    format!("must be at least 1, got {timeout}"),
                ));
            }
        }
        if let Some(problem) = job.run_at.and_then(time_problem) {
            return Err(StoreError::invalid("run_at", problem));
        }
        if let Some(problem) = job
            .traceparent
            .as_deref()
            .and_then(|t| crate::traceparent::Traceparent::parse(t).err())
        {
            return Err(StoreError::invalid("traceparent", problem));
        }
        if let Some(unique) = &job.unique {
            if let Some(problem) = unique.key.as_deref().and_then(label_problem) {
                return Err(StoreError::invalid("unique_key", problem));
            }
            if let UniqueScope::Period { period_ms } = unique.scope {
                if !(1..=MAX_UNIQUE_PERIOD_MS).contains(&period_ms) {
                    return Err(StoreError::invalid(
                        "unique_period_ms",
                        format!("must be 1 to {MAX_UNIQUE_PERIOD_MS} (366 days), got {period_ms}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The payload as the JSON text stored (`json`, not `jsonb`, so that it comes back exactly
    /// as sent: numbers digit for digit, keys in their order, `\u0000` kept), within the size
    /// limit.
    pub(crate) fn payload_text(&self, job: &NewJob) -> Result<String, StoreError> {
        let text = job.payload.get();
        job.payload
            .check()
            .map_err(|e| StoreError::invalid("payload", format!("is not valid JSON: {e}")))?;
        if text.len() > self.config.max_payload_bytes {
            return Err(StoreError::invalid(
                "payload",
                format!(
                    "is {} bytes; at most {} allowed",
                    text.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        Ok(text.to_owned())
    }
}

/// Who enqueues: a client (the API, the CLI, a library caller), or the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Client,
    Scheduler,
}

impl Origin {
    /// A client's idempotency key in the scheduler's namespace (SPEC §12): one could take a
    /// schedule's slot before it comes due, and the schedule would fire nothing for it.
    fn key_problem(self, job: &NewJob) -> Result<(), StoreError> {
        match &job.idempotency_key {
            Some(key) if self == Origin::Client && key.starts_with(SLOT_KEY_PREFIX) => {
                Err(StoreError::invalid(
                    "idempotency_key",
                    format!(
                        "keys starting with {SLOT_KEY_PREFIX:?} are reserved for schedules' jobs"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Whether the caller asked for one job or a batch: a batch's errors name the job by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Single,
    Batch,
}

impl Shape {
    /// `error` about the job at index `i`, its field named as the caller knows it.
    fn name(self, i: usize, error: StoreError) -> StoreError {
        match error {
            StoreError::Invalid { field, message } if self == Shape::Batch => StoreError::Invalid {
                field: format!("jobs[{i}].{field}"),
                message,
            },
            other => other,
        }
    }
}

/// What is wrong with the job at index `i`'s dependencies as given (before any is looked up).
fn dependencies_problem(job: &NewJob, i: usize, shape: Shape) -> Result<(), StoreError> {
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
async fn shadowed_by_history(
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

/// Where the wake-up for new jobs is sent from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notify {
    /// `NOTIFY` inside the statement: delivered when (and if) the caller's transaction commits.
    InTransaction,
    /// By the store's notifier once the enqueue has committed (see `notifier.rs`).
    AfterCommit,
}

fn single(mut items: Vec<BatchItem>, key: Option<String>) -> Result<Enqueued, StoreError> {
    match items.pop() {
        Some(BatchItem::Created(job)) => Ok(Enqueued::Created(job)),
        Some(BatchItem::Replayed(job)) => Ok(Enqueued::Replayed(job)),
        Some(BatchItem::Duplicate(job)) => Ok(Enqueued::Duplicate(job)),
        Some(BatchItem::Conflict { existing, .. }) => Err(StoreError::IdempotencyConflict {
            key: key.unwrap_or_default(),
            existing,
        }),
        None => unreachable!("a batch of one yields one item"),
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

/// Insert the jobs in one statement and return the rows actually inserted; a job whose key is
/// taken is skipped (`on conflict do nothing`), including a second job with the same key in the
/// same batch. With [`Notify::InTransaction`], notifies each queue that got an eligible job;
/// Postgres delivers the notification at commit, so a rolled-back enqueue wakes nobody.
async fn insert<'a>(
    conn: &mut PgConnection,
    jobs: impl Iterator<Item = &'a Prepared>,
    notify: Notify,
    persistent: bool,
    note_lanes: bool,
) -> Result<Vec<Job>, sqlx::Error> {
    let mut ids = Vec::new();
    let mut queues = Vec::new();
    let mut kinds = Vec::new();
    let mut payloads = Vec::new();
    let mut priorities = Vec::new();
    let mut max_attempts = Vec::new();
    let mut run_ats = Vec::new();
    let mut keys = Vec::new();
    let mut fingerprints = Vec::new();
    let mut timeouts = Vec::new();
    let mut concurrency_keys = Vec::new();
    let mut depends_on = Vec::new();
    let mut pending = Vec::new();
    let mut unique_keys = Vec::new();
    let mut unique_periods = Vec::new();
    let mut unique_active = false;
    let mut traceparents = Vec::new();
    for p in jobs {
        ids.push(p.id);
        queues.push(p.job.queue.as_str());
        kinds.push(p.job.kind.as_str());
        payloads.push(p.payload.as_str());
        priorities.push(p.job.priority);
        max_attempts.push(p.job.max_attempts);
        run_ats.push(p.job.run_at);
        keys.push(p.job.idempotency_key.as_deref());
        fingerprints.push(p.fingerprint.as_slice());
        timeouts.push(p.job.timeout_ms);
        concurrency_keys.push(p.job.concurrency_key.as_deref());
        depends_on.push(depends_on_literal(&p.depends_on));
        pending.push((p.pending > 0).then_some(p.pending));
        unique_keys.push(p.unique_key.as_deref());
        unique_periods.push(p.unique_period_ms);
        unique_active |= p.unique_while_active();
        traceparents.push(p.job.traceparent.as_deref());
    }
    mark_keyed(conn, &queues, &concurrency_keys, persistent).await?;
    // Only a batch with a job unique while active names no conflict target, so that every
    // other insert keeps the idempotency index as its only arbiter (no extra probe per row).
    let sql = match (notify, unique_active, note_lanes) {
        (Notify::InTransaction, false, false) => INSERT_AND_NOTIFY,
        (Notify::AfterCommit, false, false) => INSERT,
        (Notify::InTransaction, true, false) => INSERT_UNIQUE_AND_NOTIFY,
        (Notify::AfterCommit, true, false) => INSERT_UNIQUE,
        (Notify::InTransaction, false, true) => NOTING_INSERT_AND_NOTIFY,
        (Notify::AfterCommit, false, true) => NOTING_INSERT,
        (Notify::InTransaction, true, true) => NOTING_INSERT_UNIQUE_AND_NOTIFY,
        (Notify::AfterCommit, true, true) => NOTING_INSERT_UNIQUE,
    };
    let query = sqlx::query_as::<_, Job>(sql)
        .bind(ids)
        .bind(queues)
        .bind(kinds)
        .bind(payloads)
        .bind(priorities)
        .bind(max_attempts)
        .bind(run_ats)
        .bind(keys)
        .bind(fingerprints)
        .bind(timeouts)
        .bind(concurrency_keys)
        .bind(pending)
        .bind(depends_on)
        .bind(unique_keys)
        .bind(unique_periods)
        .bind(traceparents);
    let query = match notify {
        Notify::InTransaction => query.bind(JOB_CHANNEL),
        Notify::AfterCommit => query,
    };
    query.persistent(persistent).fetch_all(conn).await
}

/// A job's dependencies as one element of a `text[]`: a Postgres array literal, cast back to
/// `uuid[]` in the statement (an array of arrays must be rectangular; dependency lists are
/// not). `None` (a NULL element) for none.
fn depends_on_literal(ids: &[JobId]) -> Option<String> {
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
const INSERT: &str = concat!(input_cte!(""), "\n", insert_rows!(on_idempotency_key!()));
/// The insert, with a `NOTIFY`.
const INSERT_AND_NOTIFY: &str = insert_and_notify!(on_idempotency_key!(), "");
/// The insert of a batch with a job unique while active: any unique index is an arbiter (the
/// idempotency key's and `jobs_unique_active_idx`).
const INSERT_UNIQUE: &str = concat!(input_cte!(""), "\n", insert_rows!(""));
/// The same, with a `NOTIFY`.
const INSERT_UNIQUE_AND_NOTIFY: &str = insert_and_notify!("", "");
/// The four above, registering the batch's lanes.
const NOTING_INSERT: &str = concat!(
    input_cte!(noted_lanes!()),
    "\n",
    insert_rows!(on_idempotency_key!())
);
/// See [`NOTING_INSERT`].
const NOTING_INSERT_AND_NOTIFY: &str = insert_and_notify!(on_idempotency_key!(), noted_lanes!());
/// See [`NOTING_INSERT`].
const NOTING_INSERT_UNIQUE: &str = concat!(input_cte!(noted_lanes!()), "\n", insert_rows!(""));
/// See [`NOTING_INSERT`].
const NOTING_INSERT_UNIQUE_AND_NOTIFY: &str = insert_and_notify!("", noted_lanes!());
