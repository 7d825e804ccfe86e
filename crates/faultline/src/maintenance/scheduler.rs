//! The scheduler: fires due schedules (docs/operations.md) on a short interval. Run by the leader's
//! maintainer, but its correctness does not depend on there being one leader: every slot's job
//! carries the slot's idempotency key (see `store/schedules.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::{drive, Pass, Service};
use crate::metrics::Metrics;
use crate::store::{FireOutcome, Store};
use crate::StoreError;

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Time between passes: a slot's job is enqueued within about this of its time. Kept under
    /// [`crate::store::UP_GAP`] / 3, so that a scheduler of a new term that takes over at once
    /// is not mistaken for downtime.
    pub interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            interval: Duration::from_millis(200),
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Scheduler {
    store: Store,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    /// This scheduler's tenure: its passes follow each other without downtime, however long
    /// one takes (see [`Store::fire_schedules_in`]). A maintainer makes one scheduler per term.
    tenure: uuid::Uuid,
}

impl Scheduler {
    /// A scheduler over `store`, counting into `metrics`.
    pub fn new(store: Store, config: SchedulerConfig, metrics: Arc<Metrics>) -> Self {
        let ceiling = crate::store::UP_GAP / 3;
        let config = SchedulerConfig {
            interval: config.interval.clamp(Duration::from_millis(10), ceiling),
        };
        Scheduler {
            store,
            config,
            metrics,
            tenure: uuid::Uuid::new_v4(),
        }
    }

    /// One pass: enqueue the job of every due slot. Counts `faultline_schedule_enqueued_total`
    /// and `faultline_schedule_misfires_total`.
    ///
    /// # Errors
    /// [`StoreError::Database`]; schedules fired before the error stay fired.
    pub async fn run_once(&self) -> Result<FireOutcome, StoreError> {
        let outcome = self.store.fire_schedules_in(self.tenure).await?;
        // Every schedule's series exist from its first pass, at zero: "nothing fired" reads as
        // 0, not as a missing series (alerts on rates need that).
        for schedule in &outcome.schedules {
            let s = [schedule.as_str()];
            self.metrics.schedule_enqueued.with_label_values(&s);
            self.metrics.schedule_misfires.with_label_values(&s);
        }
        for (schedule, _, _) in &outcome.enqueued {
            self.metrics
                .schedule_enqueued
                .with_label_values(&[schedule])
                .inc();
        }
        for (schedule, missed) in &outcome.misfires {
            self.metrics
                .schedule_misfires
                .with_label_values(&[schedule])
                .inc_by(*missed);
        }
        Ok(outcome)
    }

    /// Run passes every `interval` until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        drive(self, &self.metrics, &shutdown, || true).await
    }
}

impl Service for Scheduler {
    type Outcome = FireOutcome;
    const OP: &'static str = "schedule";

    fn interval(&self) -> Duration {
        self.config.interval
    }

    fn starts_at_once(&self) -> bool {
        true
    }

    async fn run_once(&self) -> Result<FireOutcome, StoreError> {
        Scheduler::run_once(self).await
    }
}

impl Pass for FireOutcome {
    fn is_empty(&self) -> bool {
        self.enqueued.is_empty() && self.misfires.is_empty()
    }

    fn log(&self) {
        let missed: u64 = self.misfires.iter().map(|m| m.1).sum();
        tracing::info!(enqueued = self.enqueued.len(), missed, "schedules fired");
    }
}
