-- Claims whose cost does not grow with dead row versions (issue 29; docs/design/mvcc-horizon.md).
--
-- While something holds the MVCC horizon (an idle transaction, a long report, a replication
-- slot), no index entry of a finished job can be marked dead, and a claim that starts at the head
-- of the claim index visits every job finished since the horizon was pinned: each claim costs
-- more than the last. Here a claim starts instead at its lane's low-water mark: a lane is a
-- (queue, priority), and a mark is a time below which no queued job of the lane has — or can
-- come to have — its `eligible_at` (below). The claim scans `eligible_at >= low`, skipping the
-- dead entries below.
--
-- `eligible_at` (internal) is when a queued row entered its lane: every statement that makes a
-- row queued takes its lane's advisory lock (shared: writers never wait for each other) and only
-- then reads the clock (`faultline.lane_clock`), and sets `eligible_at` to that reading, or to
-- the job's `next_run_at` when that is later. The claim order is (priority, eligible_at,
-- next_run_at, id): a statement's rows share one reading, so within it `next_run_at` orders as
-- before (a job whose run_at is in the past goes first); across statements, a job enqueued with
-- a run_at in the past queues from its enqueue. `next_run_at` keeps its meaning (not eligible
-- before it), and is what the API shows.
--
-- Why a mark never hides a job. The maintainer computes a lane's mark as the least of (1) the
-- time t1 of a statement that reads which sessions hold the lane's lock, (2) the transaction
-- start of every such holder, and (3) the first queued `eligible_at` of the lane seen by a
-- later statement. Take a row made queued at e by a writer W: if W took the lock after the read, e > t1 >= low; if W held it at
-- the read, e >= W's start >= low; if W had released it, W had committed before the later
-- statement's snapshot, which sees the row (queued, or a claim of it in flight), so low <= e.
-- A session that only holds the horizon (idle in transaction, a reader) holds no lane lock and
-- does not hold the marks back. Without a mark (a new lane, no maintainer) a claim starts at the
-- head, as before; a stale mark only costs the dead entries above it.
-- Rows from before this migration have no `eligible_at`; their `next_run_at` stands in for it
-- (they are all visible to the maintainer's first mark, which starts below them).
--
-- Marks are times on the server's clock. A clock stepped back would place new rows below a
-- mark: marks stay a second behind the clock, and a step back of more than a marker's interval
-- (seen as a clock reading earlier than the newest mark's own) resets the lane's mark to 1970,
-- from where the next mark finds every queued row again.

alter table faultline.jobs add column eligible_at timestamptz;
-- The claim index, by lane: replaces `jobs_claim_idx` (same rows, the lane's order).
create index jobs_lane_idx on faultline.jobs
    (queue, priority, (coalesce(eligible_at, next_run_at)), next_run_at, id)
    where state = 'queued';
drop index faultline.jobs_claim_idx;

-- The lanes that exist: one row per (queue, priority) ever enqueued, never updated (so nothing
-- dead accumulates here). Our enqueue and retry statements register their lanes; any other
-- insert of a queued row (an operator's SQL, an earlier release during an upgrade) is placed by
-- `faultline.place_in_lane` below, which registers its lane too.
create table faultline.lanes (
    queue    text     not null,
    priority smallint not null,
    primary key (queue, priority)
);
insert into faultline.lanes (queue, priority)
select distinct queue, priority from faultline.jobs
on conflict do nothing;

-- Marks, appended only (a mark row is never updated: a hot row would grow a version chain
-- under a pinned horizon, as an index head does). The claim reads the newest per lane; the
-- maintainer deletes all but the newest few now and then, whose dead entries sit at the far
-- end of that scan.
create table faultline.lane_marks (
    -- The order of the marks (the newest has the largest), whatever the clock did.
    id       bigint      generated always as identity,
    queue    text        not null,
    priority smallint    not null,
    at       timestamptz not null default clock_timestamp(),
    low      timestamptz not null
);
create index lane_marks_newest_idx on faultline.lane_marks (queue, priority, id desc);

-- The advisory lock key of a lane (a collision between two lanes only makes marks more
-- conservative).
create function faultline.lane_key(p_queue text, p_priority smallint) returns bigint
language sql immutable
as $$ select hashtextextended(p_queue || '/' || p_priority::text, 29) $$;

-- Take the lane's shared lock for the rest of the transaction, then read the clock: the order
-- the argument above needs, in one call. Transaction-scoped, so safe behind PgBouncer.
create function faultline.lane_clock(p_queue text, p_priority smallint) returns timestamptz
language plpgsql volatile
as $$
begin
    perform pg_advisory_xact_lock_shared(faultline.lane_key(p_queue, p_priority));
    return clock_timestamp();
end;
$$;

-- A row that becomes queued without its writer having placed it in its lane (an operator's
-- INSERT or UPDATE, or a process of an earlier release still running during an upgrade: its
-- release, retry or reaper leave `eligible_at` as it was) is placed here, under the lane's lock,
-- so no path can put a queued row below a mark. Our own statements set `eligible_at` themselves
-- (the WHEN clauses are false for them, and for claims), so the hot path calls nothing.
create function faultline.place_in_lane() returns trigger
language plpgsql volatile
as $$
begin
    if new.state = 'queued' then
        new.eligible_at := greatest(new.next_run_at,
                                    faultline.lane_clock(new.queue, new.priority));
    end if;
    insert into faultline.lanes (queue, priority) values (new.queue, new.priority)
    on conflict do nothing;
    return new;
end;
$$;
create trigger jobs_place_inserted
    before insert on faultline.jobs
    for each row
    -- Waiting rows too (ours among them: few), so that the lane of a job promoted later is known.
    when (new.eligible_at is null)
    execute function faultline.place_in_lane();
create trigger jobs_place_requeued
    before update of state on faultline.jobs
    for each row
    when (new.state = 'queued' and old.state is distinct from 'queued'
          and new.eligible_at is not distinct from old.eligible_at)
    execute function faultline.place_in_lane();

-- The same for every lane of a batch at once (`p_queues[i]`, `p_priorities[i]`), one reading
-- for all its rows: an enqueue calls it once per statement.
create function faultline.lanes_clock(p_queues text[], p_priorities smallint[])
returns timestamptz
language plpgsql volatile
as $$
begin
    perform pg_advisory_xact_lock_shared(faultline.lane_key(l.queue, l.priority))
    from (select distinct q, p from unnest(p_queues, p_priorities) as u(q, p)) as l(queue, priority);
    return clock_timestamp();
end;
$$;

-- Settle the dependents (as in `dependency_edges`; a promoted job takes its lane's clock), in the
-- transaction that moved them (see the migration `results_and_dependencies` for why this is race-free): the
-- finished parents' edges are consumed; each waiting dependent counts one dependency less per
-- parent that succeeded, and becomes `queued` when none is left; a parent that failed or was
-- cancelled cancels its waiting dependents, and theirs.
create or replace function faultline.settle_dependents() returns trigger
language plpgsql volatile
as $$
declare
    roots uuid[];
    causes uuid[];
    states text[];
    woken bigint;
begin
    -- Jobs cancelled by cancel_dependents land here too; that call settles what is downstream
    -- of them.
    if pg_trigger_depth() > 1 or not exists (select 1 from finished where has_dependents) then
        return null;
    end if;
    with parents as (
        select id, state from finished where has_dependents
    ),
    consumed as (
        delete from faultline.job_edges e
        where e.parent = any(array(select id from parents))
        returning e.parent, e.child
    ),
    edges as (
        select e.child, e.parent, p.state from consumed e join parents p on p.id = e.parent
    ),
    counts as (
        select e.child as id, count(*)::int as n
        from edges e where e.state = 'succeeded'
        group by e.child
    ),
    promoted as (
        update faultline.jobs c
        set pending_dependencies = c.pending_dependencies - k.n,
            state = case when c.pending_dependencies = k.n then 'queued' else 'waiting' end,
            next_run_at = case when c.pending_dependencies = k.n
                               then greatest(c.next_run_at, now())
                               else c.next_run_at end,
            eligible_at = case when c.pending_dependencies = k.n
                               then greatest(c.next_run_at,
                                             faultline.lane_clock(c.queue, c.priority))
                               end,
            updated_at = now()
        from counts k
        where c.id = k.id and c.state = 'waiting'
        returning c.queue, c.state, c.next_run_at
    ),
    woke as (
        select count(*) as n
        from (select distinct queue from promoted
              where state = 'queued' and next_run_at <= now()) q,
             lateral (select pg_notify('faultline_jobs', q.queue)) notified
    ),
    doomed as (
        select distinct on (e.child) e.child, e.parent, e.state
        from edges e where e.state in ('failed', 'cancelled')
        order by e.child, e.parent
    )
    select (select n from woke), array_agg(d.child), array_agg(d.parent), array_agg(d.state)
    into woken, roots, causes, states
    from doomed d;
    if roots is not null then
        perform faultline.cancel_dependents(roots, causes, states);
    end if;
    return null;
end;
$$;

drop function faultline.claim_limited(text, text, integer, bigint);
-- The limited claim in the lanes' order (the index it walked is gone); the same body otherwise.
create function faultline.claim_limited(p_queue text, p_worker text, p_want integer,
                                        p_ttl_ms bigint)
returns table (
    id uuid, queue text, kind text, payload json, state text, priority smallint,
    attempts integer, max_attempts integer, next_run_at timestamptz, timeout_ms integer,
    lease_owner text, lease_expires_at timestamptz, lease_token bigint, idempotency_key text,
    last_error text, errors jsonb, created_at timestamptz, started_at timestamptz,
    finished_at timestamptz, updated_at timestamptz, concurrency_key text, recovered boolean,
    throttled text, traceparent text, result json, depends_on uuid[],
    pending_dependencies integer, unique_key text, unique_period_ms bigint)
language plpgsql volatile
as $$
#variable_conflict use_column
declare
    s faultline.queue_settings;
    room bigint := greatest(p_want, 0);
    reason text;
    n bigint;
    claimed bigint;
    per_key bigint;
begin
    select * into s from faultline.queue_settings qs where qs.queue = p_queue for update;
    if not found then
        return;
    end if;
    if s.paused then
        reason := 'paused';
        room := 0;
    end if;
    if room > 0 and s.concurrency_limit is not null then
        select count(*) into n from faultline.jobs r where r.queue = p_queue and r.state = 'running';
        if s.concurrency_limit - n < room then
            room := greatest(s.concurrency_limit - n, 0);
            reason := 'concurrency';
        end if;
    end if;
    if room > 0 and s.rate_count is not null then
        select count(*) into n from faultline.queue_starts qs
        where qs.queue = p_queue
          and qs.at > clock_timestamp() - s.rate_period_ms * interval '1 millisecond';
        if s.rate_count - n < room then
            room := greatest(s.rate_count - n, 0);
            reason := 'rate';
        end if;
    end if;
    if room = 0 then
        if reason is not null then
            return query select null::uuid, p_queue, null::text, null::json, null::text,
                null::smallint, null::integer, null::integer, null::timestamptz, null::integer,
                null::text, null::timestamptz, null::bigint, null::text, null::text, null::jsonb,
                null::timestamptz, null::timestamptz, null::timestamptz, null::timestamptz,
                null::text, null::boolean, reason, null::text, null::json, null::uuid[],
            null::integer, null::text, null::bigint;
        end if;
        return;
    end if;

    per_key := coalesce(s.key_concurrency, 1);
    return query
    with running_keys as (
        select r.concurrency_key as k, count(*) as n
        from faultline.jobs r
        where s.keyed and r.queue = p_queue and r.state = 'running'
          and r.concurrency_key is not null
        group by r.concurrency_key
    ),
    locked as (
        -- A key already at its limit is passed over here, before the LIMIT, so its backlog
        -- cannot hide the jobs of other keys behind it.
        select c.id, c.needs_recovery, c.concurrency_key, c.priority,
               coalesce(c.eligible_at, c.next_run_at) as e, c.next_run_at
        from faultline.jobs c
        where c.state = 'queued' and c.queue = p_queue and c.next_run_at <= now()
          and c.attempts < c.max_attempts
          and (c.concurrency_key is null
               or coalesce((select rk.n from running_keys rk where rk.k = c.concurrency_key), 0)
                  < per_key)
        order by c.priority, coalesce(c.eligible_at, c.next_run_at), c.next_run_at, c.id
        limit case when s.keyed then room * 4 else room end
        for update skip locked
    ),
    ranked as (
        select l.*, row_number() over (partition by l.concurrency_key
                                       order by l.priority, l.e, l.next_run_at, l.id) as rn
        from locked l
    ),
    next as (
        select r.id, r.needs_recovery, clock_timestamp() as at
        from ranked r
        where r.concurrency_key is null
           or r.rn <= per_key - coalesce((select rk.n from running_keys rk
                                          where rk.k = r.concurrency_key), 0)
        order by r.priority, r.e, r.next_run_at, r.id
        limit room
    )
    update faultline.jobs j
    set state = 'running',
        attempts = j.attempts + 1,
        lease_owner = p_worker,
        lease_expires_at = next.at + p_ttl_ms * interval '1 millisecond',
        lease_token = nextval('faultline.lease_token_seq'),
        needs_recovery = false,
        started_at = next.at,
        updated_at = now()
    from next
    where j.id = next.id
    returning j.id, j.queue, j.kind, j.payload, j.state, j.priority, j.attempts, j.max_attempts,
              j.next_run_at, j.timeout_ms, j.lease_owner, j.lease_expires_at, j.lease_token,
              j.idempotency_key, j.last_error, '[]'::jsonb, j.created_at, j.started_at,
              j.finished_at, j.updated_at, j.concurrency_key, next.needs_recovery,
              null::text, j.traceparent, j.result, j.depends_on, j.pending_dependencies,
              j.unique_key, j.unique_period_ms;
    get diagnostics claimed = row_count;

    if s.rate_count is not null then
        if claimed > 0 then
            insert into faultline.queue_starts (queue, at)
            select p_queue, clock_timestamp() from generate_series(1, claimed);
        end if;
        delete from faultline.queue_starts qs
        where qs.queue = p_queue
          and qs.at <= clock_timestamp() - s.rate_period_ms * interval '1 millisecond';
    end if;

    if claimed = room and reason is not null then
        -- The limit cut the claim short of what the worker asked for.
        null;
    elsif claimed < room and s.keyed and exists (
        select 1 from faultline.jobs c
        where c.state = 'queued' and c.queue = p_queue and c.next_run_at <= now()
          and c.concurrency_key is not null
    ) then
        reason := 'key';
    else
        reason := null;
    end if;
    if reason is not null then
        return query select null::uuid, p_queue, null::text, null::json, null::text,
            null::smallint, null::integer, null::integer, null::timestamptz, null::integer,
            null::text, null::timestamptz, null::bigint, null::text, null::text, null::jsonb,
            null::timestamptz, null::timestamptz, null::timestamptz, null::timestamptz,
            null::text, null::boolean, reason, null::text, null::json, null::uuid[],
            null::integer, null::text, null::bigint;
    end if;
end;
$$;

