//! `/v1/jobs`: enqueue (one or a batch), get, list, cancel, retry, bulk; a remote worker's
//! reports (heartbeat, complete, fail, release).

mod control;
mod durable;
mod enqueue;
mod read;
mod reports;

pub use control::*;
pub use durable::*;
pub use enqueue::*;
pub use read::*;
pub use reports::*;

/// Header carrying the idempotency key (alternative to the body field).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header set on a replay.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Response header set when a job with the same uniqueness key exists in its scope.
pub const UNIQUE_DUPLICATE: &str = "unique-duplicate";
/// Request header with the caller's W3C trace context, kept with the jobs it enqueues.
pub const TRACEPARENT: &str = "traceparent";
/// Most jobs in one batch.
pub const MAX_BATCH: usize = 1000;
