//! Workers in other processes and languages (the HTTP worker protocol, docs/http-api.md): they
//! hold a job's id and lease token only, so a report first becomes a [`Lease`] here and then
//! goes through the very transition a Rust worker's report goes through (`running.rs`), fenced
//! by the same SQL. Their presence in `faultline.workers` is refreshed by their claims and
//! heartbeats.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::statement::{ExecuteOnStore, OnStore};
use super::{millis, Store};
use crate::error::StoreError;
use crate::job::JobId;
use crate::lease::Lease;

impl Store {
    /// The lease that `token` names on job `id`, read from the job's row: what a remote
    /// worker's report carries, made whole (attempt, owner, expiry) for the fenced transitions.
    /// Reading it fences nothing by itself — each transition checks the token again in its own
    /// statement — it only lets a stale report be told apart early.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown job; [`StoreError::LeaseLost`] when `token` does
    /// not hold the job now (with why: cancelled, superseded, gone); [`StoreError::Database`].
    pub async fn lease_of(&self, id: JobId, token: i64) -> Result<Lease, StoreError> {
        let row: Option<(i32, Option<String>, DateTime<Utc>)> = sqlx::query_as(
            "select attempts, lease_owner, lease_expires_at from faultline.jobs
             where id = $1 and lease_token = $2 and lease_expires_at is not null",
        )
        .bind(id)
        .bind(token)
        .optional_on(self)
        .await?;
        let lease = Lease::of(id, token);
        match row {
            Some((attempt, owner, expires_at)) => Ok(Lease {
                attempt,
                owner: owner.unwrap_or_default(),
                expires_at,
                ..lease
            }),
            None => Err(self.lost_or_unknown(&lease).await?),
        }
    }

    /// Why `lease` cannot report: the job is unknown ([`StoreError::NotFound`]) or the lease
    /// was lost ([`StoreError::LeaseLost`] with its reason).
    pub(crate) async fn lost_or_unknown(&self, lease: &Lease) -> Result<StoreError, StoreError> {
        let known: Option<(JobId,)> =
            sqlx::query_as("select id from faultline.all_jobs where id = $1")
                .bind(lease.job_id)
                .optional_on(self)
                .await?;
        match known {
            None => Ok(StoreError::NotFound(lease.job_id)),
            Some(_) => self.lease_lost(lease).await,
        }
    }

    /// List (or keep listing) a remote worker in `GET /v1/workers` for `ttl` from now: called
    /// on each of its claims. Its start is its first claim; `concurrency` is the most jobs it
    /// asked for at once; what it holds (`inflight`) is what its last batched heartbeat renewed
    /// (counting its leases here would read the live table on every claim).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn refresh_remote_worker(
        &self,
        id: &str,
        queues: &[String],
        concurrency: u32,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "insert into faultline.workers as w
                (id, instance, queues, concurrency, prefetch, inflight, started_at, last_seen_at,
                 expires_at)
             values ($1, '00000000-0000-0000-0000-000000000000', $2, $3, 0, 0,
                     now(), now(), now() + $4 * interval '1 millisecond')
             on conflict (id) do update
                set queues = excluded.queues,
                    concurrency = greatest(w.concurrency, excluded.concurrency),
                    last_seen_at = now(),
                    expires_at = greatest(w.expires_at, excluded.expires_at)",
        )
        .bind(id)
        .bind(queues)
        .bind(i32::try_from(concurrency).unwrap_or(i32::MAX))
        .bind(millis(ttl))
        .execute_on(self)
        .await?;
        Ok(())
    }

    /// Keep the worker that holds job `id` listed for `ttl` from now: called on its heartbeats
    /// (a worker whose slots are all busy claims nothing, but heartbeats), with how many jobs
    /// it holds when a batched heartbeat says. A worker not listed (a Rust worker, which lists
    /// itself) is left alone.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn touch_remote_worker(
        &self,
        id: JobId,
        ttl: Duration,
        inflight: Option<usize>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "update faultline.workers w
             set last_seen_at = now(),
                 expires_at = greatest(w.expires_at, now() + $2 * interval '1 millisecond'),
                 inflight = coalesce($3, w.inflight)
             from faultline.jobs j
             where j.id = $1 and w.id = j.lease_owner
               and w.instance = '00000000-0000-0000-0000-000000000000'",
        )
        .bind(id)
        .bind(millis(ttl))
        .bind(inflight.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
        .execute_on(self)
        .await?;
        Ok(())
    }
}
