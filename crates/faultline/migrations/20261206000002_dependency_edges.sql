-- Dependency work linear in its size (issue 28).
--
-- Before: a finished parent's waiting dependents were found through the GIN index on
-- `depends_on` (`depends_on @> array[parent]`), one probe per parent — and, cancelling down a
-- tree, one per cancelled job, inside a recursive CTE whose working table the planner cannot
-- estimate: with 10,000 dependents it chose a nested loop over a scan of the live table, and
-- one cancel took 18 s (quadratic).
--
-- Now: one row per (live parent, dependent) pair in `faultline.job_edges`, written by the
-- transaction that makes the dependent (enqueue, or the retry of a dependent) while it holds
-- the parent's row lock, and consumed — deleted and returned — by the transaction that finishes
-- the parent. Every lookup is an equality on a btree (`parent = any(…)`), joined by hash: the
-- work of settling n dependents is O(n), whatever the plan's estimates.
--
-- Why no dependent is missed (the argument of `settle_dependents`, unchanged): the enqueue
-- locks the live parent (setting `has_dependents`) before it inserts the child and its edges,
-- and commits them together; a transition that finishes the parent waits for that lock, and
-- the trigger's statements (VOLATILE, READ COMMITTED: each takes a new snapshot) see the edges
-- the enqueue committed. An edge is consumed once: a parent leaves the live table once per
-- life in it (a retried parent is a new life, and its new dependents write new edges).
-- An edge whose dependent has already left (cancelled by hand, say) is consumed like any other
-- and matches no waiting job.

create table faultline.job_edges (
    parent uuid not null,
    child  uuid not null,
    primary key (parent, child)
);

-- Every live waiting job keeps its edges to its live parents (the ones not yet finished).
insert into faultline.job_edges (parent, child)
select distinct p.id, c.id
from faultline.jobs c
cross join lateral unnest(c.depends_on) as d(id)
join faultline.jobs p on p.id = d.id
where c.state = 'waiting' and cardinality(c.depends_on) > 0
on conflict do nothing;

-- Cancel the waiting jobs `p_roots` and every waiting job that depends on them, directly or
-- not, level by level: each level is one delete of the level's jobs (moved to history as
-- `cancelled`, naming the dependency they were cancelled for) and one consumption of their
-- edges, which yields the next level. O(jobs cancelled + edges consumed).
create or replace function faultline.cancel_dependents(p_roots uuid[], p_causes uuid[],
                                                       p_cause_states text[])
returns bigint
language plpgsql volatile
as $$
declare
    cancelled bigint := 0;
    level_ids uuid[] := p_roots;
    level_vias uuid[] := p_causes;
    level_states text[] := p_cause_states;
    moved_ids uuid[];
begin
    while level_ids is not null and cardinality(level_ids) > 0 loop
        with chosen as (
            -- One row per job (a job reachable along two paths names one of them).
            select distinct on (l.id) l.id, l.via, l.via_state
            from unnest(level_ids, level_vias, level_states) as l(id, via, via_state)
            order by l.id, l.via
        ),
        moved as (
            delete from faultline.jobs j using chosen c
            where j.id = c.id and j.state = 'waiting'
            returning j.*, c.via, format('dependency %s %s', c.via, c.via_state) as why
        ),
        archived as (
            insert into faultline.job_history (id, queue, kind, payload, priority, max_attempts,
                timeout_ms, lease_owner, lease_token, idempotency_key, request_fingerprint,
                created_at, started_at, concurrency_key, depends_on, has_dependents,
                unique_key, unique_period_ms, traceparent,
                state, attempts, next_run_at, lease_expires_at, needs_recovery, last_error,
                errors, finished_at, updated_at, result)
            select id, queue, kind, payload, priority, max_attempts,
                timeout_ms, lease_owner, lease_token, idempotency_key, request_fingerprint,
                created_at, started_at, concurrency_key, depends_on, has_dependents,
                unique_key, unique_period_ms, traceparent,
                'cancelled', attempts, next_run_at, null, needs_recovery, why,
                errors || jsonb_build_array(jsonb_build_object(
                    'attempt', attempts, 'worker', null, 'at', now(), 'error', why,
                    'reason', 'dependency', 'dependency', via, 'retry_at', null)),
                now(), now(), null
            from moved
            returning id, queue, state
        ),
        counted as (
            insert into faultline.queue_finished_counts as c (queue, state, shard, n)
            select queue, state, floor(random() * 16)::int2, count(*) from archived
            group by queue, state
            on conflict (queue, state, shard) do update set n = c.n + excluded.n
        )
        select array_agg(id) into moved_ids from archived;
        exit when moved_ids is null;
        cancelled := cancelled + cardinality(moved_ids);
        with consumed as (
            delete from faultline.job_edges e where e.parent = any(moved_ids)
            returning e.parent, e.child
        )
        select array_agg(e.child), array_agg(e.parent), array_agg('cancelled'::text)
        into level_ids, level_vias, level_states
        from consumed e;
    end loop;
    return cancelled;
end;
$$;

-- Settle the dependents of the jobs a statement just moved to history, in the transaction that
-- moved them (see the migration `results_and_dependencies` for why this is race-free): the
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
