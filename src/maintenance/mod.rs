//! Background maintenance services, run by the elected [`Maintainer`]. Each has the same shape
//! (after River's): a config with defaults, `run_once()` that does one pass and returns what it
//! did, and `run(shutdown)` that calls it on an interval and logs only when something happened;
//! one loop driver (`service.rs`) runs them all. Each is also safe to run in several processes
//! at once, so a term that lapses mid-pass does no harm.

mod counts;
mod depth;
mod lanes;
mod maintainer;
mod pruner;
mod reaper;
mod scheduler;
mod service;
mod workers;

pub use counts::{CountFolder, CountFolderConfig, Folded};
pub use depth::{DepthSampler, DepthSamplerConfig, Sampled};
pub use lanes::{LaneMarker, LaneMarkerConfig, Marked};
pub use maintainer::{Maintainer, MaintainerConfig, MAINTAINER_ROLE};
pub use pruner::{Pruner, PrunerConfig};
pub use reaper::{Reaper, ReaperConfig};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use service::{Pass, Service};
pub use workers::{Forgotten, Janitor, JanitorConfig};

use std::time::Duration;

use rand::Rng;

/// `interval` ± 10 %, so that services started together in many processes drift apart instead
/// of hitting the database in lockstep.
pub(crate) fn jittered(interval: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.9..1.1);
    interval.mul_f64(factor)
}
