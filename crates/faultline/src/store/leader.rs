//! Leader election through a lease row (`faultline.leader`): elect, renew, resign, and read who
//! leads. No session state, so it works through PgBouncer in transaction mode.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::statement::{ExecuteOnStore, OnStore};
use super::{millis, Store};
use crate::error::StoreError;

/// The role name of the maintainer's row in `faultline.leader`.
pub const MAINTAINER_ROLE: &str = "maintainer";

/// One term of leadership: the right to act as `role`'s leader until `expires_at` (database
/// clock), named by (`instance`, `token`). Tokens grow with every takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    /// The role (`maintainer`).
    pub role: String,
    /// The holding process instance.
    pub instance: Uuid,
    /// The term's fencing token.
    pub token: i64,
    /// When the term lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// Who leads a role now, as `GET /v1/workers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct LeaderInfo {
    /// The holder's readable name.
    pub holder: String,
    /// The term's fencing token.
    pub token: i64,
    /// When the holder took over.
    pub elected_at: DateTime<Utc>,
    /// When it last renewed.
    pub renewed_at: DateTime<Utc>,
    /// When its term lapses unless renewed.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Become `role`'s leader for `ttl` if nobody holds a current term. Returns the new term, or
    /// `None` when another instance holds a term that has not expired.
    ///
    /// Safe under concurrent candidates: the upsert locks the role's row, so of two candidates
    /// seeing the same expired term, one takes it (token + 1) and the other then finds a term
    /// that has not expired (the `where` of `do update` is evaluated on the locked, latest row).
    /// A term is always a new token, even for the instance that held the last one: an instance
    /// whose term lapsed (it stalled, or lost the database) starts over as a new term.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn elect(
        &self,
        role: &str,
        holder: &str,
        instance: Uuid,
        ttl: Duration,
    ) -> Result<Option<Term>, StoreError> {
        let row: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
            "insert into faultline.leader as l
                (name, holder, instance, token, elected_at, renewed_at, expires_at)
             values ($1, $2, $3, 1, now(), now(), now() + $4 * interval '1 millisecond')
             on conflict (name) do update
                set holder = excluded.holder, instance = excluded.instance, token = l.token + 1,
                    elected_at = now(), renewed_at = now(), expires_at = excluded.expires_at
                where l.expires_at <= now()
             returning token, expires_at",
        )
        .bind(role)
        .bind(holder)
        .bind(instance)
        .bind(millis(ttl))
        .optional_on(self)
        .await?;
        Ok(row.map(|(token, expires_at)| Term {
            role: role.to_owned(),
            instance,
            token,
            expires_at,
        }))
    }

    /// Extend `term` by `ttl` from now. Returns the extended term, or `None` when the term is no
    /// longer current (it expired, or another instance took over): the caller is not the leader
    /// and must stop acting as one.
    ///
    /// The guard is the whole term (instance and token) and `expires_at > now()`, so a term that
    /// lapsed is never revived, even if no one else took it.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn renew(&self, term: &Term, ttl: Duration) -> Result<Option<Term>, StoreError> {
        let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
            "update faultline.leader
             set renewed_at = now(), expires_at = now() + $4 * interval '1 millisecond'
             where name = $1 and instance = $2 and token = $3 and expires_at > now()
             returning expires_at",
        )
        .bind(&term.role)
        .bind(term.instance)
        .bind(term.token)
        .bind(millis(ttl))
        .optional_on(self)
        .await?;
        Ok(expires_at.map(|expires_at| Term {
            expires_at,
            ..term.clone()
        }))
    }

    /// End `term` now, so another candidate takes over at its next attempt instead of waiting
    /// for the term to expire. A term that is no longer current is left alone.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn resign(&self, term: &Term) -> Result<(), StoreError> {
        sqlx::query(
            "update faultline.leader set expires_at = now()
             where name = $1 and instance = $2 and token = $3 and expires_at > now()",
        )
        .bind(&term.role)
        .bind(term.instance)
        .bind(term.token)
        .execute_on(self)
        .await?;
        Ok(())
    }

    /// The current term of `role`, if one has not expired.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn leader(&self, role: &str) -> Result<Option<LeaderInfo>, StoreError> {
        Ok(sqlx::query_as(
            "select holder, token, elected_at, renewed_at, expires_at
             from faultline.leader where name = $1 and expires_at > now()",
        )
        .bind(role)
        .optional_on(self)
        .await?)
    }
}
