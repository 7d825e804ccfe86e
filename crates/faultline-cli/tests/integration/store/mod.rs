//! The store's transitions and their SQL against a real Postgres: claims, fencing, retries,
//! idempotency, uniqueness, limits, dependencies, schedules, history and counts.

mod bulk;
mod claim;
mod concurrency_keys;
mod counts;
mod dependencies;
mod fencing;
mod flow_control;
mod history;
mod hot_path;
mod idempotency;
mod lanes;
mod leader;
mod lease_sql;
mod moves;
mod reads;
mod reaper;
mod results;
mod retries;
mod schedules;
mod transactional_completion;
mod transactions;
mod transitions;
mod uniqueness;
