//! Heartbeats: one batched, per-token-fenced statement renews every lease this worker holds.
//! A lease the database reports lost stops its handler; leases that could not be renewed for
//! two thirds of the TTL stop theirs too (self-fencing), because by then another worker may be
//! about to take the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::active::StopReason;
use super::shared::Shared;
use crate::lease::Lease;
use crate::StoreError;

/// Renew this worker's leases and self-fence stale ones, tick by tick, until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.heartbeat_every();
    // Tick twice per interval, so a lease is renewed between 1/2 and 1 interval after its last
    // renewal and the fence check runs often enough to act before two thirds of the TTL.
    let tick = (every / 2).max(Duration::from_millis(5));
    let fence_after = shared.config.fence_after();
    let ttl = shared.config.lease_ttl;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
        beat(&shared, tick, every, ttl).await;
        fence_stale(&shared, fence_after);
    }
}

/// One beat: renew, in one batch bounded by `every`, the leases that would be `every` old by the
/// next `tick`; record each renewal and stop the handlers of the leases reported lost.
async fn beat(shared: &Shared, tick: Duration, every: Duration, ttl: Duration) {
    let due: Vec<Lease> = shared
        .active
        .lock()
        .values()
        .filter(|job| job.renewed.elapsed() + tick >= every)
        .map(|job| job.lease.clone())
        .collect();
    if due.is_empty() {
        return;
    }
    let sent = Instant::now();
    // Bounded, so a hung connection cannot stall the fence check below.
    match tokio::time::timeout(every, shared.store.heartbeat_batch(&due, ttl)).await {
        Ok(Ok(results)) => {
            shared.health.ok();
            let mut active = shared.active.lock();
            for (lease, result) in due.iter().zip(results) {
                let Some(job) = active.get_mut(&lease.token) else {
                    continue;
                };
                match result {
                    Ok(expires_at) => {
                        job.renewed = sent;
                        job.lease.expires_at = expires_at;
                    }
                    Err(StoreError::LeaseLost { reason, .. }) => {
                        job.stop.trigger(StopReason::Lost(reason));
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(Err(e)) => shared.health.failed("heartbeat", &e),
        Err(_) => shared.health.failed(
            "heartbeat",
            &StoreError::Database(sqlx::Error::PoolTimedOut),
        ),
    }
}

/// Self-fence: stop the running handlers whose lease was not renewed for `fence_after`, and if
/// any, pause claiming until the database answers.
fn fence_stale(shared: &Shared, fence_after: Duration) {
    let fenced = shared
        .active
        .lock()
        .values()
        .filter(|job| {
            job.running
                && job.renewed.elapsed() >= fence_after
                && job.stop.trigger(StopReason::SelfFence)
        })
        .count();
    if fenced > 0 {
        shared.fence();
        tracing::warn!(
            jobs = fenced,
            "self-fencing: leases not renewed for {}; cancelled their handlers and paused \
             claiming until the database answers",
            humantime::format_duration(fence_after)
        );
    }
}
