//! Background maintenance services. Each has the same shape (after River's): a config with
//! defaults, `run_once()` that does one pass and returns what it did, and `run(shutdown)` that
//! calls it on an interval and logs only when something happened. All are safe to run in every
//! worker process at once.

mod depth;
mod pruner;
mod reaper;

pub use depth::{DepthSampler, DepthSamplerConfig};
pub use pruner::{Pruner, PrunerConfig};
pub use reaper::{Reaper, ReaperConfig};

use std::time::Duration;

use rand::Rng;

/// `interval` ± 10 %, so that services started together in many processes drift apart instead
/// of hitting the database in lockstep.
pub(crate) fn jittered(interval: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.9..1.1);
    interval.mul_f64(factor)
}
