//! The worker runtime: claims, heartbeats, self-fencing, shutdown, hooks, typed handlers,
//! traces and presence.

mod durable;
mod durable_processes;
mod hooks;
mod prefetch;
mod presence;
mod retry_control;
mod runtime;
mod traces;
mod typed_jobs;
