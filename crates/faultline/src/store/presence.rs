//! The live workers registry (`faultline.workers`): each worker process upserts its row with its
//! heartbeat, deletes it on a clean shutdown, and the leader deletes rows that stopped being
//! refreshed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::statement::{ExecuteOnStore, OnStore};
use super::{millis, Store};
use crate::error::StoreError;

/// What a worker process says of itself at each refresh.
#[derive(Clone, Debug)]
pub struct WorkerBeat<'a> {
    /// Its name (`--worker-id`).
    pub id: &'a str,
    /// Its process instance (unique per start).
    pub instance: Uuid,
    /// The queues it claims from.
    pub queues: &'a [String],
    /// Its handler slots.
    pub concurrency: u32,
    /// Its prefetch buffer.
    pub prefetch: u32,
    /// Jobs it holds now (running or prefetched).
    pub inflight: usize,
    /// When it started (its own clock, recorded once).
    pub started_at: DateTime<Utc>,
    /// How long the row stays listed without another refresh (the worker's lease TTL).
    pub ttl: Duration,
}

/// A live worker process, as `GET /v1/workers` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct WorkerInfo {
    /// Its name.
    pub id: String,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Its handler slots.
    pub concurrency: i32,
    /// Its prefetch buffer.
    pub prefetch: i32,
    /// Jobs it held at its last refresh.
    pub inflight: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last refresh (database clock).
    pub last_seen_at: DateTime<Utc>,
    /// Whether it holds the maintainer's current term.
    pub leader: bool,
}

fn clamp_i32(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

impl Store {
    /// Register or refresh a worker's row; listed until `ttl` from now.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn refresh_worker(&self, beat: &WorkerBeat<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "insert into faultline.workers as w
                (id, instance, queues, concurrency, prefetch, inflight, started_at, last_seen_at,
                 expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, now(), now() + $8 * interval '1 millisecond')
             on conflict (id) do update
                set instance = excluded.instance, queues = excluded.queues,
                    concurrency = excluded.concurrency, prefetch = excluded.prefetch,
                    inflight = excluded.inflight, started_at = excluded.started_at,
                    last_seen_at = now(), expires_at = excluded.expires_at",
        )
        .bind(beat.id)
        .bind(beat.instance)
        .bind(beat.queues)
        .bind(clamp_i32(beat.concurrency))
        .bind(clamp_i32(beat.prefetch))
        .bind(clamp_i32(beat.inflight))
        .bind(beat.started_at)
        .bind(millis(beat.ttl))
        .execute_on(self)
        .await?;
        Ok(())
    }

    /// Remove a worker's row on a clean shutdown; only the instance that wrote it (a later
    /// process reusing the name keeps its row).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn deregister_worker(&self, id: &str, instance: Uuid) -> Result<(), StoreError> {
        sqlx::query("delete from faultline.workers where id = $1 and instance = $2")
            .bind(id)
            .bind(instance)
            .execute_on(self)
            .await?;
        Ok(())
    }

    /// Delete the rows of workers that stopped refreshing. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn forget_stale_workers(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("delete from faultline.workers where expires_at <= now()")
            .execute_on(self)
            .await?;
        Ok(done.rows_affected())
    }

    /// Every live worker (refreshed within its TTL), by id, with whether it leads.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        Ok(sqlx::query_as(
            "select w.id, w.queues, w.concurrency, w.prefetch, w.inflight, w.started_at,
                    w.last_seen_at,
                    coalesce(l.instance = w.instance, false) as leader
             from faultline.workers w
             left join faultline.leader l on l.name = $1 and l.expires_at > now()
             where w.expires_at > now()
             order by w.id",
        )
        .bind(super::leader::MAINTAINER_ROLE)
        .all_on(self)
        .await?)
    }
}
