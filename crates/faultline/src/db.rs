//! Connecting to Postgres and applying the schema.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The embedded migrations (`migrations/`), applied by [`migrate`].
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Arbitrary, fixed key of the advisory lock that serialises concurrent [`migrate`] calls
/// ("faultlin" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6661_756c_746c_696e;

/// Errors of [`connect`] and [`migrate`]. Each message carries its cause (none is a `source`,
/// so an error chain prints the cause once, not three times).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection URL does not parse, or is not a Postgres URL.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for DbError {
    fn from(error: sqlx::Error) -> Self {
        DbError::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for DbError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        DbError::Migrate(error)
    }
}

/// Pool settings for [`connect`].
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most connections held open.
    pub max_connections: u32,
    /// How long a caller waits for a connection before getting an error. Short, so that while
    /// the database is down requests fail fast (the API answers 503) instead of hanging.
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// Whether `url` is meant for a transaction-pooling PgBouncer: it turns sqlx's statement cache
/// off (`statement-cache-capacity=0`). Such a pooler hands each transaction whichever server
/// connection is free, so named prepared statements (which sqlx 0.8 still creates with the
/// cache off, and never closes) collide or go missing, and `LISTEN` has no session to live in.
/// A store for such a URL sends every statement unnamed
/// ([`crate::StoreConfig::prepared_statements`] off) and a worker listens only on a direct URL.
pub fn pooled(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| {
        url.query_pairs()
            .any(|(key, value)| key == "statement-cache-capacity" && value.trim() == "0")
    })
}

/// A lazily connecting pool for `url`: it does not fail when the database is down at start-up,
/// and it reconnects by itself when the database comes back.
///
/// Connections are not pinged before each use: the ping costs a round trip per request (~15 %
/// of API throughput measured here). After an outage, each connection the outage broke fails
/// its next statement once (an unavailable error: the API answers 503, workers back off and
/// retry; nothing is half-written) and is then discarded.
///
/// # Errors
/// [`DbError::InvalidUrl`] when `url` does not parse or is not a `postgres://` or
/// `postgresql://` URL (sqlx would otherwise take `http://…` or `mysql://…` for one).
pub fn connect(url: &str, config: &PoolConfig) -> Result<PgPool, DbError> {
    let options = connect_options(url)?.application_name("faultline");
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// `url` parsed as Postgres connection options.
///
/// # Errors
/// [`DbError::InvalidUrl`] as [`connect`].
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres") | Some("postgresql")) {
        return Err(DbError::InvalidUrl(format!(
            "expected postgres://user:password@host:port/database, got a URL starting {:?}",
            scheme.map_or_else(
                || crate::text::truncate(url, 12).to_owned(),
                |s| format!("{s}://")
            )
        )));
    }
    url.parse()
        .map_err(|e: sqlx::Error| DbError::InvalidUrl(e.to_string()))
}

/// Apply every pending migration. Idempotent, and safe to run from several processes at once:
/// the whole run holds a session-level advisory lock, so one process migrates while the others
/// wait and then find nothing to do.
///
/// The schema lives in `faultline`, and so does sqlx's `_sqlx_migrations` bookkeeping table
/// (the run sets `search_path` on its own connection), so that the queue needs no rights on
/// `public` (which PostgreSQL 15 no longer grants to every role).
///
/// # Errors
/// [`DbError::Database`] when the database cannot be reached; [`DbError::Migrate`] when a
/// migration fails (it ran in a transaction, so nothing of it remains).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    // A connection of our own, opened directly rather than taken from the pool: its error is
    // the real cause ("connection refused", "password authentication failed") rather than the
    // pool's "timed out", and it is closed afterwards so that the session settings
    // (search_path, the lock) never leak into other users of the pool.
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
    let result = migrate_on(&mut conn).await;
    // Closing the session releases the advisory lock even if the unlock is never sent.
    let _ = conn.close().await;
    result
}

async fn migrate_on(conn: &mut sqlx::PgConnection) -> Result<(), DbError> {
    // Nothing to do is found without any right beyond reading: a role that may use the queue
    // but not create schemas can run `migrate` against a current database.
    if applied_all(&mut *conn).await? {
        return Ok(());
    }
    sqlx::query("select pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    sqlx::query("create schema if not exists faultline")
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    sqlx::query("set search_path to faultline")
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    MIGRATOR.run(&mut *conn).await?;
    Ok(())
}

/// Whether the database holds every migration this build knows.
///
/// # Errors
/// [`DbError::Database`] when the database cannot be reached.
pub async fn schema_is_current(pool: &PgPool) -> Result<bool, DbError> {
    // In a transaction, so that the check also works through a transaction-pooling PgBouncer
    // (see `store/exec.rs`); it is read-only and rare.
    let mut tx = pool.begin().await?;
    let current = applied_all(&mut tx).await?;
    tx.commit().await?;
    Ok(current)
}

async fn applied_all(conn: &mut sqlx::PgConnection) -> Result<bool, DbError> {
    let applied: Vec<i64> = match sqlx::query_scalar(
        "select version from faultline._sqlx_migrations where success order by version",
    )
    // Unnamed: this runs behind PgBouncer too (`/ready`, start-up checks), and rarely.
    .persistent(false)
    .fetch_all(conn)
    .await
    {
        Ok(versions) => versions,
        // 42P01 undefined_table, 3F000 invalid_schema_name: never migrated.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P01") | Some("3F000")) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(MIGRATOR
        .iter()
        .all(|m| applied.binary_search(&m.version).is_ok()))
}

/// `url` with its database name replaced by `database` (query parameters kept).
///
/// ```
/// assert_eq!(
///     faultline::db::with_database("postgres://u@h:5432/old?sslmode=disable", "new"),
///     "postgres://u@h:5432/new?sslmode=disable"
/// );
/// ```
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{}", &base[..path], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}
