//! (new) → queued: enqueue one job or a batch, with idempotency keys.

use sqlx::{Connection, PgConnection};

use super::Store;
use crate::error::StoreError;
use crate::fingerprint::{derived_unique_key, fingerprint};
use crate::job::{Job, JobId, JobState, NewJob, UniqueScope};
use crate::job_args::IntoNewJob;
use dependencies::{dependencies_problem, enqueue_dependents};
use rounds::enqueue_rounds;
use validate::{Origin, Shape};

mod dependencies;
mod insert;
mod rounds;
mod uniqueness;
mod validate;

/// The result of enqueueing one job.
#[derive(Clone, Debug, PartialEq)]
pub enum Enqueued {
    /// A new job was created.
    Created(Job),
    /// A job with the same idempotency key and the same request already existed; it is returned
    /// unchanged and nothing was written.
    Replayed(Job),
    /// A job with the same uniqueness key exists in the job's scope (docs/http-api.md `unique_scope`); it
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
        self.notifier
            .notify(&self.pool, self.uses_prepared_statements(), queues);
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

    /// Validate `jobs` into their rows (in input order): ids, payload text, fingerprint,
    /// uniqueness key.
    ///
    /// # Errors
    /// The first job out of bounds, as [`StoreError::Invalid`] named by `shape`.
    fn prepare(
        &self,
        jobs: Vec<NewJob>,
        shape: Shape,
        origin: Origin,
    ) -> Result<Vec<Prepared>, StoreError> {
        // With traces on, a job without a trace context continues the caller's.
        #[cfg(feature = "otel")]
        let current = crate::traceparent::current_traceparent();
        jobs.into_iter()
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
                let (unique_key, unique_period_ms) = stored_uniqueness(&job);
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
            .collect::<Result<Vec<_>, StoreError>>()
    }

    /// Enqueue `jobs` on `conn` (see [`Store::enqueue`]): validated first, nothing written when
    /// one is out of bounds; then in a transaction of their own (a savepoint inside the
    /// caller's) when they have parents or keys or the store is behind a pooler. Results are in
    /// input order.
    async fn enqueue_rows(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
        notify: Notify,
        shape: Shape,
        origin: Origin,
    ) -> Result<Vec<BatchItem>, StoreError> {
        let prepared = self.prepare(jobs, shape, origin)?;
        // A lane registered by a committed statement stays registered (lanes are never
        // deleted): a batch whose lanes this store has seen committed skips the registration.
        let note_lanes = !self.known_lanes.knows_all(
            prepared
                .iter()
                .map(|p| (p.job.queue.as_str(), p.job.priority)),
        );
        if prepared.iter().any(|p| !p.job.depends_on.is_empty()) {
            return self
                .enqueue_with_parents(conn, prepared, notify, shape)
                .await;
        }

        // Keyed jobs are enqueued in a transaction of their own (a savepoint inside the
        // caller's): a key won in the live table must be checked against history before anyone
        // can see the new job (see `shadowed_by_history`).
        // Behind PgBouncer, every statement runs in a transaction (see `exec.rs`).
        // So are jobs with a uniqueness key: a duplicate found after the insert is undone there.
        let keyed = prepared
            .iter()
            .any(|p| p.job.idempotency_key.is_some() || p.unique_key.is_some());
        if !self.uses_prepared_statements() || keyed {
            let mut tx = conn.begin().await?;
            let items = enqueue_rounds(
                &mut tx,
                &prepared,
                notify,
                self.uses_prepared_statements(),
                note_lanes,
            )
            .await?;
            tx.commit().await?;
            Ok(items)
        } else {
            enqueue_rounds(
                conn,
                &prepared,
                notify,
                self.uses_prepared_statements(),
                note_lanes,
            )
            .await
        }
    }

    /// Enqueue `prepared`, some of which have parents, in one transaction (a savepoint inside
    /// the caller's): parents are locked and read in the transaction that inserts their
    /// dependents.
    async fn enqueue_with_parents(
        &self,
        conn: &mut PgConnection,
        prepared: Vec<Prepared>,
        notify: Notify,
        shape: Shape,
    ) -> Result<Vec<BatchItem>, StoreError> {
        // Parents are locked and read in the transaction that inserts their dependents.
        let mut tx = conn.begin().await?;
        let items = enqueue_dependents(
            &mut tx,
            prepared,
            notify,
            self.uses_prepared_statements(),
            shape,
        )
        .await?;
        tx.commit().await?;
        Ok(items)
    }
}

/// Where the wake-up for new jobs is sent from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notify {
    /// `NOTIFY` inside the statement: delivered when (and if) the caller's transaction commits.
    InTransaction,
    /// By the store's notifier once the enqueue has committed (see `notifier.rs`).
    AfterCommit,
}

/// The uniqueness key as stored (given, or derived from the job) and the period of a period
/// scope (`None`: active scope); both `None` for a job without uniqueness.
fn stored_uniqueness(job: &NewJob) -> (Option<String>, Option<i64>) {
    match &job.unique {
        None => (None, None),
        Some(unique) => (
            Some(
                unique
                    .key
                    .clone()
                    .unwrap_or_else(|| derived_unique_key(job)),
            ),
            match unique.scope {
                UniqueScope::Active => None,
                UniqueScope::Period { period_ms } => Some(period_ms),
            },
        ),
    }
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
