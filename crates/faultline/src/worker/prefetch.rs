//! The prefetch buffer: jobs claimed ahead of free handler slots, so that a slot that frees
//! starts its next job at once instead of after a claim round trip, and claims are not capped by
//! the slots free at that instant (graphile-worker's local queue; River fetches ahead too).
//!
//! A prefetched job is leased like a running one, and the worker treats it so:
//! - its lease is renewed by the heartbeat while it waits (it is in the active set);
//! - a lease lost while it waits (cancelled, taken back) is noticed by the heartbeat and the job
//!   is dropped from the buffer without running;
//! - one that waited so long that its lease may have lapsed (heartbeats failing for two thirds of
//!   the TTL) is handed back rather than run;
//! - on shutdown, every buffered job is handed back at once (eligible again, the attempt not
//!   counted), before the grace period for running handlers starts;
//! - a crash costs it what it costs a running job: its lease expires within one TTL and the
//!   reaper takes it back.
//!
//! Its `started_at` is the claim time: a job's wait, as the metrics report it, ends at the claim.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::active::Stop;
use crate::store::Claimed;

/// A claimed job waiting for a handler slot.
pub(crate) struct Prefetched {
    pub claimed: Claimed,
    pub stop: Arc<Stop>,
}

/// The buffer, bounded by the worker's `prefetch` setting (the claim loop never claims past it).
#[derive(Default)]
pub(crate) struct PrefetchBuffer(Mutex<VecDeque<Prefetched>>);

impl PrefetchBuffer {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Prefetched>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, job: Prefetched) {
        self.lock().push_back(job);
    }

    pub fn pop(&self) -> Option<Prefetched> {
        self.lock().pop_front()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Everything buffered, oldest first (shutdown).
    pub fn drain(&self) -> Vec<Prefetched> {
        self.lock().drain(..).collect()
    }
}
