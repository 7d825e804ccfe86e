-- Job results and dependencies (SPEC §13).

-- A handler's JSON result, kept as sent (`json`, like the payload). Dependencies: the jobs this
-- one waits for (`depends_on`, never changed after enqueue), how many of them have not
-- succeeded yet (`pending_dependencies`, live jobs only), and whether any job depends on this
-- one (`has_dependents`, set under the parent's row lock by the enqueue that adds a dependent).
-- Every column has a constant default: adding them rewrites no table.
alter table faultline.jobs
    add column result json,
    add column depends_on uuid[] not null default '{}',
    add column pending_dependencies integer not null default 0
        constraint jobs_pending_dependencies_check check (pending_dependencies >= 0),
    add column has_dependents boolean not null default false;
alter table faultline.job_history
    add column result json,
    add column depends_on uuid[] not null default '{}',
    add column has_dependents boolean not null default false;

-- `waiting`: a live state for a job whose dependencies have not all succeeded. Exactly the jobs
-- with a pending dependency wait.
alter table faultline.jobs drop constraint jobs_state_check;
alter table faultline.jobs add constraint jobs_state_check
    check (state in ('queued', 'running', 'waiting'));
alter table faultline.jobs add constraint jobs_waiting_check
    check ((state = 'waiting') = (pending_dependencies > 0));

-- Live transitions: queued ⇄ running, and waiting → queued (the last dependency succeeded).
-- `waiting → running` is refused: a waiting job is never claimed. `waiting → cancelled` is a move
-- to history, like every terminal transition.
drop trigger jobs_state_transition on faultline.jobs;
create trigger jobs_state_transition
    before update of state on faultline.jobs
    for each row
    when (old.state is distinct from new.state and (old.state, new.state) not in (
        ('queued', 'running'),
        ('running', 'queued'),
        ('waiting', 'queued')
    ))
    execute function faultline.reject_illegal_transition();

-- A parent's dependents, found by `depends_on @> array[parent]`. Partial: jobs without
-- dependencies (nearly all) are not in it, so their inserts and transitions never write it.
-- `fastupdate = off`: a GIN index's pending list is scanned whole by every search, and every
-- promotion (a non-HOT update of a dependent) appends to it, so with it on each lookup costs
-- more than the last (measured: 0.42 against 0.18 ms per settled parent at 3,000).
create index jobs_depends_on_idx on faultline.jobs using gin (depends_on)
    with (fastupdate = off) where cardinality(depends_on) > 0;
create index job_history_depends_on_idx on faultline.job_history using gin (depends_on)
    with (fastupdate = off) where cardinality(depends_on) > 0;

create or replace view faultline.all_jobs as
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at, concurrency_key, result, depends_on, pending_dependencies,
           has_dependents
    from faultline.jobs
    union all
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at, concurrency_key, result, depends_on, 0, has_dependents
    from faultline.job_history;

-- Cancel the waiting jobs `roots` and every waiting job that depends on them, directly or not:
-- each is moved to history as `cancelled`, its errors naming the dependency it was cancelled
-- for (for a root, its `p_causes` entry, in state `p_cause_states`; for the others, the
-- cancelled job through which they depend on it). Returns how many were cancelled.
create function faultline.cancel_dependents(p_roots uuid[], p_causes uuid[],
                                            p_cause_states text[])
returns bigint
language plpgsql volatile
as $$
declare
    cancelled bigint;
begin
    with recursive doomed(id, via, via_state) as (
        select r.id, r.cause, r.state from unnest(p_roots, p_causes, p_cause_states) r(id, cause, state)
        union
        select c.id, d.id, 'cancelled'
        from doomed d
        join faultline.jobs c
          on cardinality(c.depends_on) > 0 and c.depends_on @> array[d.id] and c.state = 'waiting'
    ),
    -- One row per job (a job reachable along two paths names one of them).
    chosen as (
        select distinct on (id) id, via, via_state from doomed order by id, via
    ),
    moved as (
        delete from faultline.jobs j using chosen c
        where j.id = c.id and j.state = 'waiting'
        returning j.*, c.via, format('dependency %s %s', c.via, c.via_state) as why
    ),
    archived as (
        insert into faultline.job_history (id, queue, kind, payload, state, priority, attempts,
            max_attempts, next_run_at, timeout_ms, lease_owner, lease_expires_at, lease_token,
            needs_recovery, idempotency_key, request_fingerprint, last_error, errors,
            created_at, started_at, finished_at, updated_at, concurrency_key, result,
            depends_on, has_dependents)
        select id, queue, kind, payload, 'cancelled', priority, attempts, max_attempts,
            next_run_at, timeout_ms, lease_owner, null, lease_token, needs_recovery,
            idempotency_key, request_fingerprint, why,
            errors || jsonb_build_array(jsonb_build_object(
                'attempt', attempts, 'worker', null, 'at', now(), 'error', why,
                'reason', 'dependency', 'dependency', via, 'retry_at', null)),
            created_at, started_at, now(), now(), concurrency_key, null, depends_on,
            has_dependents
        from moved
        returning queue, state
    ),
    counted as (
        insert into faultline.queue_finished_counts as c (queue, state, shard, n)
        select queue, state, floor(random() * 16)::int2, count(*) from archived group by queue, state
        on conflict (queue, state, shard) do update set n = c.n + excluded.n
    )
    select count(*) into cancelled from archived;
    return cancelled;
end;
$$;

-- Settle the dependents of the jobs a statement just moved to history, in the transaction that
-- moved them: each waiting dependent counts one dependency less per dependency that succeeded,
-- and becomes `queued` (eligible now, or at its own later `run_at`) when none is left; a
-- dependency that failed or was cancelled cancels its waiting dependents, and theirs.
--
-- Per statement, over its transition table, not per row: a worker reports a batch of
-- completions in one statement, and one set-based update of their dependents costs a fraction
-- of one call per parent (measured: per row, 0.18 ms per settled parent). A statement that
-- finished no job with dependents (nearly all) costs one scan of its own rows.
--
-- Why no dependent is missed: an enqueue that adds a dependent sets `has_dependents` on the live
-- parent (locking its row) before inserting the child, and commits both together. A transition
-- that finishes the parent waits for that lock, and its DELETE then returns the row as the
-- enqueue left it (has_dependents set). This function's statements each take a new snapshot
-- (VOLATILE, READ COMMITTED), so they see the child the enqueue committed, though the finishing
-- statement's own snapshot predates it. An enqueue that finds the parent already gone from the
-- live table reads its final state from history instead.
--
-- Why each dependency is counted once: a job succeeds at most once (no transition leaves
-- `succeeded`), and the decrement is applied under the child's row lock to the child's current
-- row (a concurrent decrement is waited for, and the update re-evaluated on its result), so two
-- parents finishing at once decrement one after the other and exactly one sees zero.
create function faultline.settle_dependents() returns trigger
language plpgsql volatile
as $$
declare
    roots uuid[];
    causes uuid[];
    states text[];
    woken bigint;
begin
    -- Jobs cancelled by cancel_dependents land here too; that call has already cancelled
    -- everything downstream of them.
    if pg_trigger_depth() > 1 or not exists (select 1 from finished where has_dependents) then
        return null;
    end if;
    with succeeded as (
        select id from finished where has_dependents and state = 'succeeded'
    ),
    counts as (
        select c.id, count(*)::int as n
        from succeeded s
        join faultline.jobs c
          on cardinality(c.depends_on) > 0 and c.depends_on @> array[s.id]
        where c.state = 'waiting'
        group by c.id
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
    )
    select count(*) into woken
    from (select distinct queue from promoted
          where state = 'queued' and next_run_at <= now()) q,
         lateral (select pg_notify('faultline_jobs', q.queue)) notified;

    select array_agg(c.id), array_agg(f.id), array_agg(f.state)
    into roots, causes, states
    from finished f
    join faultline.jobs c
      on cardinality(c.depends_on) > 0 and c.depends_on @> array[f.id] and c.state = 'waiting'
    where f.has_dependents and f.state in ('failed', 'cancelled');
    if roots is not null then
        perform faultline.cancel_dependents(roots, causes, states);
    end if;
    return null;
end;
$$;

-- On the partitioned table, so every partition, present and future, is covered.
create trigger job_history_settle_dependents
    after insert on faultline.job_history
    referencing new table as finished
    for each statement
    execute function faultline.settle_dependents();
