//! The HTTP API and the dashboard: every route, bad input that must answer 4xx and write
//! nothing, the transport's limits, and the browser.

mod api;
mod bad_input;
mod dashboard;
mod live;
mod transport;
mod worker_protocol;
