//! Every statement that touches the job tables, one function per state transition, each with
//! its SQL inline and a comment on why it is safe under concurrency. Live jobs (queued, running)
//! are in `faultline.jobs`; a transition to a finished state moves the job to
//! `faultline.job_history` in the same statement (`history.rs`), and retry moves it back.
//!
//! | transition | function | guard |
//! |---|---|---|
//! | (new) → queued | [`Store::enqueue`], [`Store::enqueue_batch`] | `on conflict (idempotency_key) … do nothing` (partial unique index) |
//! | queued → running | [`Store::claim_batch`] | `for update skip locked` on eligible rows |
//! | running → running | [`Store::heartbeat`] | `id = any(ids)`, `lease_token = any(tokens)`, `lease_expires_at is not null` (= running; see "Fenced batch reports" in `execution.rs`) |
//! | running → succeeded (moved) | [`Store::complete`], [`Store::complete_batch`] | same |
//! | running → queued / failed (moved) | [`Store::fail_attempt`] | same, row locked, one of two exclusive CTEs |
//! | running → queued | [`Store::release`] | same |
//! | running → queued / failed (moved) | [`Store::reap_expired`] | `lease_expires_at < now()`, `skip locked`, checked again after the lock |
//! | queued, running → cancelled (moved) | [`Store::cancel`] | the row is live (only live jobs are in `faultline.jobs`) |
//! | failed, cancelled → queued (moved back) | [`Store::retry`] | `state in ('failed', 'cancelled')` in history |
//! | history past retention → gone | [`Store::maintain_history`] | whole partitions, under a transaction-level advisory lock |
//!
//! Besides these guards, the trigger `jobs_state_transition` makes the database itself refuse any
//! transition outside the model, whoever issues it: on the live table only queued ⇄ running, and
//! history refuses any change of state.

mod bulk;
mod claim;
mod control;
mod counts;
mod dependencies;
mod enqueue;
mod history;
mod lanes;
mod leader;
mod notifier;
mod presence;
mod read;
mod reap;
mod remote;
mod retention;
mod running;
mod schedules;
mod settings;
pub(crate) mod statement;
mod steps;
mod throughput;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::job::{DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RESULT_BYTES};
use crate::retry::Backoff;

pub use bulk::{BulkAction, BulkOutcome, BulkRefusal, MAX_BULK};
pub use claim::{ClaimOutcome, Claimed, Throttle};
pub use enqueue::{BatchItem, Enqueued};
#[doc(hidden)]
pub use leader::MAINTAINER_ROLE;
pub use leader::{LeaderInfo, Term};
pub use presence::{WorkerBeat, WorkerInfo};
pub use schedules::{FireOutcome, UP_GAP};
pub use settings::{QueueSettingsPatch, MAX_LIMIT, MAX_RATE_PERIOD_MS};
pub use steps::{check_name, Signalled, Sleep, Step, Wait, WaitingFor, RESERVED_PREFIX};
pub use throughput::ThroughputSample;

/// The hot path's batch statements, for tests that check their plans.
#[doc(hidden)]
pub mod sql {
    pub use super::running::{COMPLETE_BATCH, HEARTBEAT_BATCH};
}
pub use reap::{ReapOutcome, ReapedJob};
pub use retention::HistoryOutcome;
pub use running::FailOutcome;

/// The channel that enqueue, release, retry and the reaper `NOTIFY` when a job becomes eligible
/// now; the payload is the queue name. (Enqueues on the store's pool notify right after their
/// commit rather than inside it; see `notifier.rs` for why.) One channel for every queue (workers filter on the
/// payload) because queue names are free text and channel names are limited to 63 bytes.
#[doc(hidden)]
pub const JOB_CHANNEL: &str = "faultline_jobs";

/// Settings of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Retry backoff applied by [`Store::fail_attempt`].
    pub backoff: Backoff,
    /// The largest payload accepted, in bytes of serialized JSON.
    pub max_payload_bytes: usize,
    /// The largest handler result kept, in bytes of serialized JSON (docs/library.md): a larger
    /// result fails the attempt rather than being truncated.
    pub max_result_bytes: usize,
    /// Whether statements are prepared under a name and kept on the connection (default). Off
    /// behind a transaction-pooling PgBouncer older than 1.21, where a named statement may be
    /// missing from (or already exist on) the server connection the next transaction gets: every
    /// statement is then sent unnamed. [`crate::db::pooled`] tells from the URL.
    pub prepared_statements: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backoff: Backoff::default(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            prepared_statements: true,
        }
    }
}

/// The job store: a connection pool plus the policy the transitions apply. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    config: Arc<StoreConfig>,
    notifier: Arc<notifier::Notifier>,
    limited: Arc<claim::LimitedQueues>,
    known_lanes: Arc<lanes::KnownLanes>,
}

impl Store {
    /// A store over `pool` with default settings.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, StoreConfig::default())
    }

    /// A store over `pool` with `config`.
    pub fn with_config(pool: PgPool, config: StoreConfig) -> Self {
        Store {
            pool,
            config: Arc::new(config),
            notifier: Arc::default(),
            limited: Arc::default(),
            known_lanes: Arc::default(),
        }
    }

    /// The pool the store runs on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Whether the store's statements are prepared and kept by their connection (see
    /// [`StoreConfig::prepared_statements`]): sqlx's `persistent` flag on each query.
    pub fn uses_prepared_statements(&self) -> bool {
        self.config.prepared_statements
    }

    /// One round trip to the database (`select 1`), as every statement of the store is sent.
    ///
    /// # Errors
    /// The database's error, as sqlx reports it.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        use statement::ExecuteOnStore;
        sqlx::query("select 1").execute_on(self).await.map(drop)
    }
}

/// A duration as whole milliseconds for an `interval` parameter, at most 100 years
/// ([`crate::time_range::MAX_DURATION`]): `now()` plus anything longer could leave the range of
/// times Postgres and chrono share, and a lease or backoff of a century is as good as forever.
/// The flags refuse longer durations; this is the backstop for library callers.
fn millis(d: Duration) -> i64 {
    let d = d.min(crate::time_range::MAX_DURATION);
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
