//! Background maintenance services, run by the elected [`Maintainer`]. Each has the same shape
//! (after River's): a config with defaults, `run_once()` that does one pass and returns what it
//! did, and `run(shutdown)` that calls it on an interval and logs only when something happened;
//! one loop driver (`service.rs`) runs them all. Each is also safe to run in several processes
//! at once, so a term that lapses mid-pass does no harm.

mod counts;
mod depth;
mod janitor;
mod lanes;
mod maintainer;
mod pruner;
mod reaper;
mod scheduler;
mod service;

pub use counts::CountFolderConfig;
pub use depth::DepthSamplerConfig;
pub use janitor::JanitorConfig;
pub use lanes::LaneMarkerConfig;
pub use maintainer::{Maintainer, MaintainerConfig};
pub use pruner::PrunerConfig;
pub use reaper::ReaperConfig;
pub use scheduler::SchedulerConfig;

// The services themselves: the Maintainer runs them; the binary and the test suite drive some
// directly. Not part of the API a library user builds on.
#[doc(hidden)]
pub use counts::{CountFolder, Folded};
#[doc(hidden)]
pub use depth::{DepthSampler, Sampled};
#[doc(hidden)]
pub use janitor::{Forgotten, Janitor};
#[doc(hidden)]
pub use lanes::{LaneMarker, Marked};
#[doc(hidden)]
pub use maintainer::MAINTAINER_ROLE;
#[doc(hidden)]
pub use pruner::Pruner;
#[doc(hidden)]
pub use reaper::Reaper;
#[doc(hidden)]
pub use scheduler::Scheduler;
#[doc(hidden)]
pub use service::{Pass, Service};

use std::time::Duration;

use rand::Rng;

/// `interval` ± 10 %, so that services started together in many processes drift apart instead
/// of hitting the database in lockstep.
pub(crate) fn jittered(interval: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.9..1.1);
    interval.mul_f64(factor)
}
