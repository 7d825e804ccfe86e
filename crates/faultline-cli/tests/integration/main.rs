//! Integration tests against a real Postgres (a private cluster per test process unless
//! `DATABASE_URL` is set; a database per test), one binary so the suite links once, in folders
//! by layer: `store` (transitions and their SQL), `worker` (the runtime), `http` (the API and
//! the dashboard), `ops` (processes, clusters, PgBouncer, upgrades). `harness` holds the
//! set-ups they share.

mod harness;
mod http;
mod ops;
mod store;
mod worker;
