//! One statement on the store's pool, whether the pool reaches Postgres directly or through a
//! transaction-pooling PgBouncer.
//!
//! Directly, a statement runs as sqlx runs it: prepared under a name once per connection and
//! cached. Through PgBouncer (1.18, Debian's; before 1.21 it does not track prepared statements)
//! that breaks twice over: a named statement lives on one server connection while the next
//! transaction may get another (`prepared statement "sqlx_s_1" already exists` / `does not
//! exist`), and sqlx sends even an unnamed statement's Parse and its Bind/Execute in two
//! protocol round trips, each ending in a Sync — which PgBouncer takes as two transactions and
//! may route to two server connections (`bind message supplies 2 parameters, but prepared
//! statement "" requires 0`). So behind a pooler ([`super::StoreConfig::prepared_statements`]
//! off) every statement is sent unnamed, inside an explicit transaction of its own: PgBouncer
//! keeps one server connection for a transaction, so Parse, Bind and Execute meet. It costs
//! two round trips more per statement (BEGIN, COMMIT); a statement that is already inside the
//! caller's transaction runs as it is.

use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, Postgres};

use super::Store;

/// Run a query on a [`Store`]'s pool (see the module docs).
pub(crate) trait OnStore<T> {
    /// Every row.
    async fn all_on(self, store: &Store) -> Result<Vec<T>, sqlx::Error>;
    /// The one row (an error when there is none).
    async fn one_on(self, store: &Store) -> Result<T, sqlx::Error>;
    /// The first row, if any.
    async fn optional_on(self, store: &Store) -> Result<Option<T>, sqlx::Error>;
}

/// Run `$body` with `$q` persistent on the pool, or unnamed in a transaction of its own.
macro_rules! on_store {
    ($store:expr, $q:ident, $method:ident) => {{
        if $store.uses_prepared_statements() {
            $q.persistent(true).$method($store.pool()).await
        } else {
            let mut tx = $store.pool().begin().await?;
            let out = $q.persistent(false).$method(&mut *tx).await?;
            tx.commit().await?;
            Ok(out)
        }
    }};
}

/// The same three calls for each query type that yields `O` rows.
macro_rules! on_store_rows {
    ($query:ident, $($bound:tt)+) => {
        impl<'q, O> OnStore<O> for $query<'q, Postgres, O, PgArguments>
        where
            O: Send + Unpin,
            $($bound)+
        {
            async fn all_on(self, store: &Store) -> Result<Vec<O>, sqlx::Error> {
                let q = self;
                on_store!(store, q, fetch_all)
            }

            async fn one_on(self, store: &Store) -> Result<O, sqlx::Error> {
                let q = self;
                on_store!(store, q, fetch_one)
            }

            async fn optional_on(self, store: &Store) -> Result<Option<O>, sqlx::Error> {
                let q = self;
                on_store!(store, q, fetch_optional)
            }
        }
    };
}

on_store_rows!(QueryAs, O: for<'r> FromRow<'r, PgRow>);
on_store_rows!(QueryScalar, (O,): for<'r> FromRow<'r, PgRow>);

/// Run a statement without rows on a [`Store`]'s pool (see the module docs).
pub(crate) trait ExecuteOnStore {
    /// Execute it.
    async fn execute_on(self, store: &Store) -> Result<PgQueryResult, sqlx::Error>;
}

impl<'q> ExecuteOnStore for Query<'q, Postgres, PgArguments> {
    async fn execute_on(self, store: &Store) -> Result<PgQueryResult, sqlx::Error> {
        let q = self;
        on_store!(store, q, execute)
    }
}
