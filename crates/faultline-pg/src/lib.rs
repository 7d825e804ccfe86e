//! A private PostgreSQL cluster, run from the system's own binaries: for `faultline up`, the
//! drills, the benchmark and the test suite.
//!
//! - [`PgBinaries::find`] looks for `initdb` and `postgres` in `$FAULTLINE_PG_BIN`, on `PATH`,
//!   then in `/usr/lib/postgresql/*/bin` (newest version first).
//! - [`Cluster::create`] runs `initdb` in a directory (or reuses a cluster already there),
//!   [`Cluster::start`] runs `postgres` on a free TCP port on 127.0.0.1 plus a unix socket in the
//!   cluster directory, [`Cluster::stop`] stops it (fast or immediate), and dropping the handle
//!   stops it too.
//! - Postgres refuses to run as root; when we are root, the server runs as the `postgres` OS
//!   user (or `nobody`), which is given the cluster directory.
//! - The server is tied to this process: if we die, even by SIGKILL, the kernel sends the
//!   postmaster SIGQUIT (immediate shutdown), so no cluster outlives its owner.

mod binaries;
mod bouncer;
mod cluster;
mod keeper;
mod supervisor;
mod user;

use std::path::PathBuf;

pub use binaries::PgBinaries;
pub use bouncer::{pgbouncer_binary, Bouncer, BouncerOptions, BouncerTarget};
pub use cluster::{Cluster, ClusterOptions, StopMode};
pub use keeper::spawn_tied;
pub use supervisor::{SuperviseOutcome, Supervisor, SupervisorConfig};

/// What can go wrong running a private cluster. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No usable Postgres server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found in $FAULTLINE_PG_BIN, on PATH \
         or under /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: \
         `apt-get install -y postgresql`), point FAULTLINE_PG_BIN at their directory, or set \
         DATABASE_URL to use an existing server"
    )]
    BinariesNotFound,

    /// No PgBouncer binary was found.
    #[error(
        "pgbouncer not found in $FAULTLINE_PGBOUNCER, on PATH or at /usr/sbin/pgbouncer. \
         Install it (`scripts/ensure-pgbouncer`, or Debian/Ubuntu: `apt-get install -y pgbouncer`) \
         or point FAULTLINE_PGBOUNCER at it"
    )]
    BouncerNotFound,

    /// Running as root, but no unprivileged user to run the server as.
    #[error(
        "running as root, and Postgres refuses to run as root, but neither a `postgres` nor a \
         `nobody` OS user exists to run it as; create one (`useradd --system postgres`)"
    )]
    NoUnprivilegedUser,

    /// The unprivileged user cannot reach the cluster directory.
    #[error(
        "the cluster directory {dir} is not reachable by the OS user `{user}` that runs \
         Postgres (a parent directory lacks search permission); choose a directory under one \
         that user can enter, such as /tmp"
    )]
    DirectoryNotReachable {
        /// The cluster directory.
        dir: PathBuf,
        /// The user that runs the server.
        user: String,
    },

    /// Another server already runs on this cluster directory.
    #[error(
        "a Postgres server (pid {pid}) is already running on {data_dir}; stop it first \
         (another `faultline up`?)"
    )]
    AlreadyRunning {
        /// The data directory.
        data_dir: PathBuf,
        /// The running postmaster's pid.
        pid: i32,
    },

    /// A command (initdb, postgres) failed.
    #[error("{command} failed: {detail}")]
    CommandFailed {
        /// What was run.
        command: String,
        /// Its exit status and the tail of its output or log.
        detail: String,
    },

    /// The server did not become ready (or stop) in time.
    #[error("timed out after {seconds}s waiting for Postgres to {what}; log tail:\n{log}")]
    Timeout {
        /// "start" or "stop".
        what: &'static str,
        /// How long we waited.
        seconds: u64,
        /// The end of the server log.
        log: String,
    },

    /// A file-system or process error.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl PgError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
        let context = context.into();
        move |source| PgError::Io { context, source }
    }
}
