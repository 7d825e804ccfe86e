//! Integration tests against a real Postgres, one module per guarantee. One test binary (rather
//! than one per file) so the suite links once.

mod harness;
mod http_api;
mod http_live;

mod bad_input;
mod history;
mod hooks;
mod hostile;
mod hot_path;
mod http_transport;
mod prefetch;

mod claim;
mod cluster;
mod concurrency_keys;
mod counts;
mod dashboard;
mod dependencies;
mod examples;
mod fencing;
mod flow_control;
mod idempotency;
mod lanes;
mod migrations;
mod moves;
mod reads;
mod reaper;
mod results;
mod retries;
mod schedules;
mod traces;
mod transactional_completion;
mod transactions;
mod transitions;
mod typed_jobs;
mod uniqueness;
mod worker;
mod worker_binary;

mod leader;
mod lease_sql;
mod pgbouncer;
mod procs;
mod registry;
