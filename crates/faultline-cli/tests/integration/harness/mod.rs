//! Test harness: a real Postgres for every test, never a mock.
//!
//! Unless `DATABASE_URL` is set, the first test to need a server starts one private cluster for
//! the whole test process (initdb + postgres in a temp dir, as the `postgres` OS user when we
//! are root). Every test gets its own database, so tests run in parallel without sharing state.
//! The cluster dies with the process (see `faultline::pg`), and its directory is swept by the
//! next run.

pub mod http;
pub mod procs;
pub mod worker;

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use faultline::{Backoff, Jitter, Store, StoreConfig};
use faultline_pg::{Bouncer, BouncerOptions, BouncerTarget, Cluster};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

enum Server {
    External(String),
    Private(Box<Cluster>),
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Server::External(url),
        _ => Server::Private(Box::new(
            Cluster::temporary().expect("start a private Postgres cluster for the tests"),
        )),
    })
}

/// A URL for the server's maintenance database.
pub fn admin_url() -> String {
    match server() {
        Server::External(url) => url.clone(),
        Server::Private(cluster) => cluster.url("postgres"),
    }
}

pub use faultline::db::with_database;

/// One test's own database.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
}

impl TestDb {
    /// A fresh database with the schema applied.
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        faultline::db::migrate(&db.pool)
            .await
            .expect("migrate the test database");
        db
    }

    /// A fresh database without the schema.
    pub async fn empty() -> TestDb {
        let name = format!("faultline_test_{}", uuid::Uuid::new_v4().simple());
        create_database(&admin_url(), &name).await;
        let url = with_database(&admin_url(), &name);
        let pool = pool(&url, 20).await;
        TestDb { pool, url, name }
    }

    /// This database through the test process's PgBouncer (transaction pooling, statement
    /// cache off): see [`bouncer`].
    pub fn pooled_url(&self) -> String {
        bouncer().url(&self.name)
    }

    /// A store over this database through PgBouncer: its own pool, statements unnamed.
    pub async fn pooled_store(&self) -> Store {
        let pool =
            faultline::db::connect(&self.pooled_url(), &faultline::db::PoolConfig::default())
                .expect("a pooled URL");
        Store::with_config(
            pool,
            StoreConfig {
                prepared_statements: false,
                ..fast_config()
            },
        )
    }

    /// A store over this database with a fast backoff (40 ms base, equal jitter), so retry
    /// tests take milliseconds.
    pub fn store(&self) -> Store {
        Store::with_config(self.pool.clone(), fast_config())
    }
}

impl Drop for TestDb {
    /// Databases on a private cluster vanish with it; on a server named by `DATABASE_URL` each
    /// test's database is dropped, so repeated runs leave nothing behind.
    fn drop(&mut self) {
        if let Server::External(admin) = server() {
            let admin = admin.clone();
            let name = self.name.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    if let Ok(mut conn) = PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("drop database if exists {name} with (force)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// One private PgBouncer for the whole test process, in transaction pooling mode in front of
/// the test server (started on first use; the binary comes from `scripts/ensure-pgbouncer`).
pub fn bouncer() -> &'static Bouncer {
    static BOUNCER: OnceLock<Bouncer> = OnceLock::new();
    BOUNCER.get_or_init(|| {
        let target = BouncerTarget::from_url(&admin_url()).expect("a TCP server URL for PgBouncer");
        Bouncer::start(target, BouncerOptions::default()).expect("start a private PgBouncer")
    })
}

pub fn fast_config() -> StoreConfig {
    StoreConfig {
        backoff: Backoff {
            base: Duration::from_millis(40),
            cap: Duration::from_secs(10),
            jitter: Jitter::Equal,
        },
        ..StoreConfig::default()
    }
}

pub async fn create_database(admin_url: &str, name: &str) {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("connect to the test server");
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let _ = admin.close().await;
}

pub async fn pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .expect("connect to the test database")
}

/// Poll `check` until it yields `Some`, or panic naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The whole row of a job as JSON, to prove that a refused call changed nothing.
pub async fn snapshot(pool: &PgPool, id: faultline::JobId) -> serde_json::Value {
    sqlx::query_scalar("select to_jsonb(j) from faultline.all_jobs j where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("snapshot the job row")
}

pub fn default_queue() -> Vec<String> {
    vec!["default".to_owned()]
}

/// At most 80 characters of `text`, escaped, for a failure message about a huge input.
pub fn text_preview(text: &str) -> String {
    let short: String = text.chars().take(80).collect();
    let more = if text.chars().count() > 80 { "…" } else { "" };
    format!("{short:?}{more}")
}

/// `url` with its user and password replaced.
pub fn with_role(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The constraint a database error names, if any.
pub fn constraint(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.constraint())
        .map(str::to_owned)
}

/// Claim the one eligible job of the default queue for `worker`, leased for `ttl`; panics when
/// there is none (the set-up of most lease tests: enqueue one, claim it).
pub async fn claim_one(store: &Store, worker: &str, ttl: Duration) -> faultline::Claimed {
    store
        .claim_batch(&default_queue(), worker, 1, ttl)
        .await
        .unwrap()
        .pop()
        .unwrap_or_else(|| panic!("{worker} found no job to claim"))
}
