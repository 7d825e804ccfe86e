//! Operating it: private clusters and PgBouncer, the binary as a process, upgrades, hostile
//! neighbours and inputs, the examples, the schema snapshot.

mod cli;
mod cluster;
mod examples;
mod hostile;
mod migrations;
mod pgbouncer;
mod schema;
mod worker_binary;
