-- Lane positions without a lock of their own (issue 29; docs/design/mvcc-horizon.md).
--
-- The migration `lane_marks` had every statement that makes a row queued take its lane's shared
-- advisory lock before reading the clock, so that the marker could tell an open enqueue (which
-- holds the marks back) from a session that only holds the MVCC horizon (which must not). That
-- lock and the PL/pgSQL call around it cost a fifth of a single-job enqueue. The lock the marker
-- needs is already taken: every statement that writes `faultline.jobs` holds the table's ROW
-- EXCLUSIVE lock (or a stronger one) from before it reads the clock to the end of its
-- transaction. So the marker now reads which sessions hold a writer's lock on the live table,
-- and since when; the argument of `lane_marks` carries over word for word with "the lane's
-- lock" read as "a writer's lock on the live table":
--
-- Take a row made queued at e by a writer W. If W took its lock after the marker's read at t1,
-- e > t1 >= low; if W held it at the read, e >= W's transaction start >= low; if W had released
-- it, W had committed (or rolled back) before the marker's later statement, whose snapshot sees
-- the row. A session that only reads (an analytics query, an idle transaction, `SELECT ... FOR
-- UPDATE`) takes at most ROW SHARE and holds no mark back; neither do VACUUM and ANALYZE (SHARE
-- UPDATE EXCLUSIVE), which write no row.
--
-- What it gives up: a long transaction that writes the live table holds back the marks of every
-- lane while it lasts, not only of the lanes it enqueued to (its own writes pin the horizon
-- anyway, so it is the case the lanes are for only when it also holds the horizon: then claims
-- start at the head until it ends, as without marks).
--
-- The functions below are what our statements called; they now only read the clock (what an
-- earlier release's writers still running during an upgrade call costs no lock either), except
-- `lane_key`, which only an earlier release's marker calls: it must not mark lanes by advisory
-- locks that this release's writers no longer take, so it now fails, loudly, until that
-- process is upgraded (a mark that stops moving is safe: claims start lower, never higher).

create or replace function faultline.lane_clock(p_queue text, p_priority smallint)
returns timestamptz
language sql volatile
as $$ select clock_timestamp() $$;

create or replace function faultline.lanes_clock(p_queues text[], p_priorities smallint[])
returns timestamptz
language sql volatile
as $$ select clock_timestamp() $$;

create or replace function faultline.lane_key(p_queue text, p_priority smallint) returns bigint
language plpgsql immutable
as $$
begin
    raise exception 'faultline: lane marks are read from the live table''s locks since the migration lane_clock_by_table_lock; upgrade the process that calls faultline.lane_key';
end;
$$;

-- A row queued by another writer (see `place_in_lane` in `lane_marks`) takes the clock as ours do.
create or replace function faultline.place_in_lane() returns trigger
language plpgsql volatile
as $$
begin
    if new.state = 'queued' then
        new.eligible_at := greatest(new.next_run_at, clock_timestamp());
    end if;
    insert into faultline.lanes (queue, priority) values (new.queue, new.priority)
    on conflict do nothing;
    return new;
end;
$$;
