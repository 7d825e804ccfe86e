//! The worker's row in the live workers registry (`GET /v1/workers`): written at start,
//! refreshed every heartbeat interval with what the worker holds, listed for one lease TTL after
//! the last refresh, and deleted on a clean shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use crate::store::WorkerBeat;

pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.heartbeat_every();
    loop {
        let inflight = shared.inflight.load(Ordering::Acquire) + shared.prefetched.len();
        let beat = WorkerBeat {
            id: &shared.worker_id,
            instance: shared.instance,
            queues: &shared.config.queues,
            concurrency: shared.config.concurrency,
            prefetch: shared.config.prefetch,
            inflight,
            started_at: shared.started_at,
            ttl: shared.config.lease_ttl,
        };
        // Bounded, so a hung connection delays the next refresh by one interval at most.
        match tokio::time::timeout(every, shared.store.refresh_worker(&beat)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.metrics.db_error("register", &e),
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
    }
    let gone = shared
        .store
        .deregister_worker(&shared.worker_id, shared.instance);
    // Best effort: if it fails, the row drops out of the list after one lease TTL.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), gone).await;
}
