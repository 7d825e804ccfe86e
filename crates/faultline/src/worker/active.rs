//! The leases this worker holds: from claim until the result is recorded (or the lease is known
//! lost). Keyed by fencing token, not job id: after a lost lease the same worker may claim the
//! same job again while the first handler is still stopping, and each claim has its own entry. The heartbeat renews exactly these leases, including those whose
//! handler has finished but whose result is still waiting to be written (during an outage), so a
//! finished job is not taken back while its result is on the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::lease::{Lease, LeaseLostReason};

/// Why a handler was told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The lease is gone (cancelled, superseded): report nothing.
    Lost(LeaseLostReason),
    /// Shutdown grace ran out: hand the job back.
    Shutdown,
    /// Leases could not be renewed for too long: another worker may take the job; stop, and
    /// hand it back if the database lets us.
    SelfFence,
}

/// A stop signal with the reason of its first trigger.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    pub token: CancellationToken,
    reason: Mutex<Option<StopReason>>,
}

impl Stop {
    /// Trigger with `reason`, unless already triggered. Returns whether this call triggered it.
    pub fn trigger(&self, reason: StopReason) -> bool {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        drop(slot);
        self.token.cancel();
        true
    }

    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One held lease.
#[derive(Debug)]
pub(crate) struct ActiveJob {
    pub lease: Lease,
    /// Local time just before the statement that last set the lease (claim or heartbeat) was
    /// sent: the lease is good until at least `renewed + ttl` on any clock.
    pub renewed: Instant,
    pub stop: Arc<Stop>,
    /// Whether the handler still runs (false once its result is handed to the reporter).
    pub running: bool,
}

#[derive(Debug, Default)]
pub(crate) struct ActiveJobs(Mutex<HashMap<i64, ActiveJob>>);

impl ActiveJobs {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<i64, ActiveJob>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, job: ActiveJob) {
        self.lock().insert(job.lease.token, job);
    }

    pub fn remove(&self, token: i64) {
        self.lock().remove(&token);
    }

    /// Leases held: running handlers plus results not yet written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// A prefetched job's handler starts.
    pub fn handler_started(&self, token: i64) {
        if let Some(job) = self.lock().get_mut(&token) {
            job.running = true;
        }
    }

    /// Whether the lease of `token` went unrenewed for `at_least` (it may have lapsed).
    pub fn unrenewed_for(&self, token: i64, at_least: std::time::Duration) -> bool {
        self.lock()
            .get(&token)
            .is_none_or(|job| job.renewed.elapsed() >= at_least)
    }

    pub fn handler_finished(&self, token: i64) {
        if let Some(job) = self.lock().get_mut(&token) {
            job.running = false;
        }
    }

    /// Stop every running handler with `reason`; returns how many were stopped.
    pub fn stop_running(&self, reason: StopReason) -> usize {
        self.lock()
            .values()
            .filter(|job| job.running && job.stop.trigger(reason))
            .count()
    }
}
