//! Lanes and their low-water marks (migration `lane_marks`; the design and its measurements are
//! in `docs/design/mvcc-horizon.md`): where each (queue, priority)'s claims start, so that a
//! claim's cost does not grow with the dead row versions a held MVCC horizon keeps.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use chrono::{DateTime, Utc};

use super::statement::{ExecuteOnStore, OnStore};
use super::Store;
use crate::error::StoreError;

/// Marks kept per lane when old ones are deleted; the claim reads only the newest.
const KEPT_MARKS: i64 = 10;

/// One lane as the first statement of [`Store::mark_lanes`] reads it.
#[derive(sqlx::FromRow)]
struct LaneRead {
    queue: String,
    priority: i16,
    t1: DateTime<Utc>,
    holders: Option<DateTime<Utc>>,
    previous: Option<DateTime<Utc>>,
    previous_at: Option<DateTime<Utc>>,
}

/// The lanes this store has seen registered by a committed statement. Lanes are never deleted,
/// so once a lane is known an enqueue into it need not register it again (an index probe and a
/// data-modifying step per statement: about 6 % of a single-job enqueue). Only committed
/// registrations are learned: a lane registered inside a caller's transaction that then rolls
/// back is not, and the next enqueue registers it again.
#[derive(Debug, Default)]
pub(crate) struct KnownLanes(RwLock<HashMap<i16, HashSet<String>>>);

/// More lanes than this and the store stops learning (a workload that spreads over unbounded
/// queue names keeps registering, as before, rather than growing this set for ever).
const MAX_KNOWN_LANES: usize = 10_000;

impl KnownLanes {
    /// Whether every lane of `lanes` is known.
    pub(crate) fn knows_all<'a>(&self, mut lanes: impl Iterator<Item = (&'a str, i16)>) -> bool {
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        lanes.all(|(queue, priority)| known.get(&priority).is_some_and(|q| q.contains(queue)))
    }

    /// Remember `lanes`, whose registration has committed.
    pub(crate) fn learn<'a>(&self, lanes: impl Iterator<Item = (&'a str, i16)>) {
        let mut lanes = lanes.peekable();
        if lanes.peek().is_none() {
            return;
        }
        let mut known = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut count: usize = known.values().map(HashSet::len).sum();
        for (queue, priority) in lanes {
            let queues = known.entry(priority).or_default();
            if !queues.contains(queue) {
                if count >= MAX_KNOWN_LANES {
                    return;
                }
                queues.insert(queue.to_owned());
                count += 1;
            }
        }
    }
}

impl Store {
    /// Move every lane's low-water mark up to where its first queued job is, appending a mark
    /// where it moved. Returns how many marks were appended. Safe to run in several processes
    /// at once and at any time (each mark is a lower bound on its own; the claim uses the
    /// newest), and it never waits for a lane's writers.
    ///
    /// Two statements, in this order (the argument is in the migrations `lane_marks` and
    /// `lane_clock_by_table_lock`): the first reads, at `t1`, which sessions hold a writer's
    /// lock on the live table and since when; the second, on a later snapshot, finds each
    /// lane's first queued job at or above its previous mark.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn mark_lanes(&self) -> Result<u64, StoreError> {
        let lanes = self.read_lanes().await?;
        if lanes.is_empty() {
            return Ok(0);
        }
        self.append_marks(&lanes).await
    }

    /// The first of [`Store::mark_lanes`]'s statements: every lane with its newest mark, and,
    /// read at `t1`, since when the sessions holding a writer's lock on the live table have
    /// been in their transactions.
    async fn read_lanes(&self) -> Result<Vec<LaneRead>, StoreError> {
        let lanes: Vec<LaneRead> = sqlx::query_as(
            "with holders as (
                 -- Every statement that writes the live table holds ROW EXCLUSIVE on it (or a
                 -- stronger lock) from before it reads the clock to its transaction's end.
                 -- A holder whose start this role cannot see (another role without
                 -- pg_read_all_stats, a prepared transaction) holds the marks at 1970: claims
                 -- start at their lane's head while it lasts.
                 select min(coalesce(a.xact_start, '1970-01-01'::timestamptz)) as since
                 from pg_locks k
                 left join pg_stat_activity a on a.pid = k.pid
                 where k.locktype = 'relation'
                   and k.database = (select oid from pg_database
                                     where datname = current_database())
                   and k.relation = 'faultline.jobs'::regclass
                   and k.granted
                   and k.mode in ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                                  'AccessExclusiveLock')
             )
             select l.queue, l.priority, statement_timestamp() as t1, h.since as holders,
                    m.low as previous, m.at as previous_at
             from faultline.lanes l
             left join lateral (
                 select k.low, k.at from faultline.lane_marks k
                 where k.queue = l.queue and k.priority = l.priority
                 order by k.id desc limit 1
             ) m on true
             cross join holders h",
        )
        .all_on(self)
        .await?;
        Ok(lanes)
    }

    /// The second of [`Store::mark_lanes`]'s statements, on a later snapshot than `lanes` were
    /// read in: append a mark for every lane whose low-water mark moves. Returns how many.
    async fn append_marks(&self, lanes: &[LaneRead]) -> Result<u64, StoreError> {
        let column = |f: fn(&LaneRead) -> Option<DateTime<Utc>>| -> Vec<Option<DateTime<Utc>>> {
            lanes.iter().map(f).collect()
        };
        let appended = sqlx::query(
            // A second behind the clock; and a clock read earlier than the newest mark's own
            // (the server's clock stepped back) resets the lane to 1970, from where the next
            // mark finds every queued row again (see the migration `lane_marks`).
            "insert into faultline.lane_marks (queue, priority, low)
             select x.queue, x.priority, x.low
             from (
                 select l.queue, l.priority, l.previous, l.reset,
                        case when l.reset then '1970-01-01'::timestamptz
                        else least(l.t1 - interval '1 second', coalesce(l.holders, 'infinity'),
                              coalesce((select coalesce(j.eligible_at, j.next_run_at)
                                        from faultline.jobs j
                                        where j.state = 'queued' and j.queue = l.queue
                                          and j.priority = l.priority
                                          and coalesce(j.eligible_at, j.next_run_at)
                                              >= coalesce(l.previous, '-infinity')
                                        order by coalesce(j.eligible_at, j.next_run_at)
                                        limit 1), 'infinity')) end as low
                 from (select u.*, coalesce(u.t1 < u.previous_at, false) as reset
                       from unnest($1::text[], $2::int2[], $3::timestamptz[], $4::timestamptz[],
                                   $5::timestamptz[], $6::timestamptz[])
                            as u(queue, priority, t1, holders, previous, previous_at)) l
             ) x
             where x.previous is null or x.reset or x.low > x.previous",
        )
        .bind(lanes.iter().map(|l| l.queue.clone()).collect::<Vec<_>>())
        .bind(lanes.iter().map(|l| l.priority).collect::<Vec<_>>())
        .bind(column(|l| Some(l.t1)))
        .bind(column(|l| l.holders))
        .bind(column(|l| l.previous))
        .bind(column(|l| l.previous_at))
        .execute_on(self)
        .await?;
        Ok(appended.rows_affected())
    }

    /// The backstop under the marks: append, for every lane whose newest mark has passed a
    /// queued job, a mark at that job, so that the claims find it again. Returns how many
    /// lanes it repaired — 0 unless something broke the marks' argument (the server's clock
    /// stepped back during a pass, say, by more than the second the marks keep behind it). It
    /// reads the entries below each mark, dead ones included, so it runs now and then, not per
    /// claim. A lower mark is always safe: a mark is only a lower bound.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn repair_marks(&self) -> Result<u64, StoreError> {
        let repaired = sqlx::query(
            "insert into faultline.lane_marks (queue, priority, low)
             select l.queue, l.priority, s.e
             from faultline.lanes l
             join lateral (
                 select k.low from faultline.lane_marks k
                 where k.queue = l.queue and k.priority = l.priority
                 order by k.id desc limit 1
             ) m on true
             join lateral (
                 select coalesce(j.eligible_at, j.next_run_at) as e
                 from faultline.jobs j
                 where j.state = 'queued' and j.queue = l.queue and j.priority = l.priority
                   and coalesce(j.eligible_at, j.next_run_at) < m.low
                 order by coalesce(j.eligible_at, j.next_run_at)
                 limit 1
             ) s on true",
        )
        .execute_on(self)
        .await?;
        Ok(repaired.rows_affected())
    }

    /// What in the server's settings works against the queue, one sentence each (empty when
    /// nothing does): autovacuum switched off, for the server or for the live table, leaves
    /// every dead row version of every finished job in the live table for good — claims stay
    /// fast (they start at their lane's mark), but the table and its indexes only grow.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn server_warnings(&self) -> Result<Vec<String>, StoreError> {
        let (server, table): (bool, bool) = sqlx::query_as(
            "select current_setting('autovacuum')::bool,
                    coalesce((select o.option_value::bool
                              from pg_class c, pg_options_to_table(c.reloptions) o
                              where c.oid = 'faultline.jobs'::regclass
                                and o.option_name = 'autovacuum_enabled'), true)",
        )
        .one_on(self)
        .await?;
        let mut warnings = Vec::new();
        if !server {
            warnings.push(
                "autovacuum is off on this server: the live table keeps the dead row versions \
                 of every finished job and only grows (set autovacuum = on)"
                    .to_owned(),
            );
        } else if !table {
            warnings.push(
                "autovacuum is off for faultline.jobs (autovacuum_enabled = false): the live \
                 table keeps the dead row versions of every finished job and only grows"
                    .to_owned(),
            );
        }
        Ok(warnings)
    }

    /// Delete every lane's marks but the newest few (the claim reads only the newest). Returns
    /// how many were deleted.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub async fn forget_old_marks(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "delete from faultline.lane_marks m
             using (
                 select queue, priority,
                        (select k.id from faultline.lane_marks k
                         where k.queue = l.queue and k.priority = l.priority
                         order by k.id desc offset $1 - 1 limit 1) as oldest_kept
                 from faultline.lanes l
             ) keep
             where m.queue = keep.queue and m.priority = keep.priority
               and m.id < keep.oldest_kept",
        )
        .bind(KEPT_MARKS)
        .execute_on(self)
        .await?
        .rows_affected())
    }
}
