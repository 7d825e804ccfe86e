//! Database health as the worker sees it: counts every failed call, logs once per change of
//! state (down, up again) rather than once per retry, and keeps `faultline_db_up` current.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::StoreError;

#[derive(Debug)]
pub(crate) struct DbHealth {
    down: AtomicBool,
    metrics: Arc<Metrics>,
}

impl DbHealth {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        DbHealth {
            down: AtomicBool::new(false),
            metrics,
        }
    }

    /// A call reached the database.
    pub fn ok(&self) {
        self.metrics.db_up.set(1.0);
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("database reachable again; resuming");
        }
    }

    /// A call under `op` failed.
    pub fn failed(&self, op: &str, error: &StoreError) {
        self.metrics.db_error(op, error);
        if error.is_unavailable() {
            if !self.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(op, %error, "database unreachable; backing off and retrying");
            }
        } else {
            tracing::warn!(op, %error, "database call failed");
        }
    }
}
