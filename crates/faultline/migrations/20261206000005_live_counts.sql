-- Live counts at O(queues) (issue 29, item 4; docs/design/mvcc-horizon.md).
--
-- `GET /v1/queues`, the dashboard that polls it and the depth sampler counted the live table:
-- 1.6 s with 10,000,000 jobs queued, most of a core for one open dashboard. Now every statement
-- that adds, moves or removes live rows appends what it changed, per (queue, state), to
-- `live_count_deltas` (a statement trigger over its transition tables: every writer is counted,
-- ours, an operator's SQL and an older release's alike, with no statement of ours to forget).
-- A reader adds those deltas to `live_counts`; the maintainer folds the deltas into the counts
-- about once a second. A reader's one snapshot sees a fold entirely or not at all (its delete
-- and its additions commit together), so the sum is exact, not an estimate.
--
-- Why this adds no contention to the hot path: a delta is an insert into a table with no index
-- and no key, so writers never wait for one another (an upsert of a shared counter row would
-- make every enqueue in a long transaction block the others on that row until it commits).
-- Only the fold updates `live_counts`, one row per (queue, state) at a time, under a
-- transaction-scoped advisory lock that a second folder skips instead of waiting for.
--
-- What a held MVCC horizon costs here: folded deltas cannot be removed while it is held, and
-- the fold and the reads scan them. They are one row per (queue, state) per statement (a batch
-- of any size is one), a few hundred a second at 5,000 jobs/s: a read after an hour's pin scans
-- about a million small rows (~0.1 s). The claim and the finish never read them.

create table faultline.live_counts (
    queue text   not null,
    state text   not null,
    n     bigint not null,
    primary key (queue, state)
);

create table faultline.live_count_deltas (
    queue text   not null,
    state text   not null,
    n     bigint not null
);

-- One function for the three statement triggers below (each names its transition tables;
-- PL/pgSQL plans only the branch it runs, so the others' missing tables do not matter).
create function faultline.count_live_changes() returns trigger
language plpgsql volatile
as $$
begin
    if tg_op = 'INSERT' then
        insert into faultline.live_count_deltas (queue, state, n)
        select queue, state, count(*) from added group by queue, state;
    elsif tg_op = 'DELETE' then
        insert into faultline.live_count_deltas (queue, state, n)
        select queue, state, -count(*) from removed group by queue, state;
    else
        -- Heartbeats and other updates that move no row between (queue, state) add nothing.
        insert into faultline.live_count_deltas (queue, state, n)
        select queue, state, sum(n)
        from (select queue, state, 1::int8 as n from added
              union all
              select queue, state, -1::int8 from removed) as d
        group by queue, state
        having sum(n) <> 0;
    end if;
    return null;
end;
$$;

-- A truncated live table holds nothing: its counts go with it (TRUNCATE's lock waits for every
-- writer, so no delta of a row it removed can still arrive).
create function faultline.count_live_truncated() returns trigger
language plpgsql volatile
as $$
begin
    delete from faultline.live_count_deltas;
    delete from faultline.live_counts;
    return null;
end;
$$;

-- Fold the deltas into the counts: returns how many delta rows it folded, or -1 when another
-- fold is under way (it would only wait for that one to finish the same work). Two folds could
-- not count a delta twice anyway: the second's delete waits for the first's row locks and then
-- skips the rows the first removed.
create function faultline.fold_live_counts() returns bigint
language plpgsql volatile
as $$
declare
    folded bigint;
begin
    if not pg_try_advisory_xact_lock(hashtextextended('faultline.fold_live_counts', 29)) then
        return -1;
    end if;
    with gone as (
        delete from faultline.live_count_deltas returning queue, state, n
    ),
    summed as (
        select queue, state, sum(n)::int8 as n, count(*) as rows from gone group by queue, state
    ),
    applied as (
        insert into faultline.live_counts as c (queue, state, n)
        select queue, state, n from summed
        -- In key order: a reader's row locks never cross ours.
        order by queue, state
        on conflict (queue, state) do update set n = c.n + excluded.n
    )
    select coalesce(sum(rows), 0) into folded from summed;
    -- A (queue, state) that holds nothing more is dropped (queues come and go).
    delete from faultline.live_counts where n = 0;
    return folded;
end;
$$;

-- The triggers take the table's lock: no writer runs between them and the count below, so the
-- counts start exact and every later change arrives as a delta.
create trigger jobs_count_inserted
    after insert on faultline.jobs
    referencing new table as added
    for each statement execute function faultline.count_live_changes();
create trigger jobs_count_updated
    after update on faultline.jobs
    referencing old table as removed new table as added
    for each statement execute function faultline.count_live_changes();
create trigger jobs_count_deleted
    after delete on faultline.jobs
    referencing old table as removed
    for each statement execute function faultline.count_live_changes();
create trigger jobs_count_truncated
    after truncate on faultline.jobs
    for each statement execute function faultline.count_live_truncated();

insert into faultline.live_counts (queue, state, n)
select queue, state, count(*) from faultline.jobs group by queue, state;
