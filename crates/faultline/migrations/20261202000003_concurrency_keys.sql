-- Per-key concurrency (SPEC §12) and the limited claim as one round trip.

-- A job may carry a concurrency key: at most `key_concurrency` running jobs per key and queue.
alter table faultline.jobs add column concurrency_key text;
alter table faultline.job_history add column concurrency_key text;

create or replace view faultline.all_jobs as
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at, concurrency_key
    from faultline.jobs
    union all
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at, concurrency_key
    from faultline.job_history;

-- Running jobs per key: what the keyed claim counts (few rows: at most the running jobs).
create index jobs_running_key_idx on faultline.jobs (queue, concurrency_key)
    where state = 'running' and concurrency_key is not null;

-- `key_concurrency` null means the default, 1. `keyed` is set by the first enqueue of a job with
-- a key on the queue (in that enqueue's transaction, so any claim that can see the job sees the
-- flag): from then on the queue's jobs are claimed by faultline.claim_limited.
alter table faultline.queue_settings
    add column key_concurrency integer check (key_concurrency between 1 and 1000000),
    add column keyed boolean not null default false;

-- The claim of a queue with a limit, a key or a pause: one round trip.
--
-- Why it is race-free: the first statement locks the queue's settings row, so limited claims of
-- one queue run one at a time. Every later statement of this VOLATILE function takes a new
-- snapshot (READ COMMITTED), so it sees every claim committed before the lock was granted: its
-- running counts (every `running` row, expired leases included: a slot is freed only when its
-- job leaves `running`) and its count of recent starts are exact, and can only fall behind the
-- truth in the safe direction (a job finishing meanwhile). Start times and lease expiries are on
-- the real clock (`clock_timestamp()`, not the transaction's start, which predates the wait for
-- the lock); starts are logged after they were read, so no job's `started_at` is later than the
-- start the rate limiter counted.
--
-- Returns the claimed rows; when a limit held the claim back, one more row whose `id` is null and
-- whose `throttled` names the reason (`paused`, `concurrency`, `rate`, `key`).
create function faultline.claim_limited(p_queue text, p_worker text, p_want integer,
                                        p_ttl_ms bigint)
returns table (
    id uuid, queue text, kind text, payload json, state text, priority smallint,
    attempts integer, max_attempts integer, next_run_at timestamptz, timeout_ms integer,
    lease_owner text, lease_expires_at timestamptz, lease_token bigint, idempotency_key text,
    last_error text, errors jsonb, created_at timestamptz, started_at timestamptz,
    finished_at timestamptz, updated_at timestamptz, concurrency_key text, recovered boolean,
    throttled text)
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
                null::text, null::boolean, reason;
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
        select c.id, c.needs_recovery, c.concurrency_key, c.priority, c.next_run_at
        from faultline.jobs c
        where c.state = 'queued' and c.queue = p_queue and c.next_run_at <= now()
          and c.attempts < c.max_attempts
          and (c.concurrency_key is null
               or coalesce((select rk.n from running_keys rk where rk.k = c.concurrency_key), 0)
                  < per_key)
        order by c.priority, c.next_run_at, c.id
        limit case when s.keyed then room * 4 else room end
        for update skip locked
    ),
    ranked as (
        select l.*, row_number() over (partition by l.concurrency_key
                                       order by l.priority, l.next_run_at, l.id) as rn
        from locked l
    ),
    next as (
        select r.id, r.needs_recovery, clock_timestamp() as at
        from ranked r
        where r.concurrency_key is null
           or r.rn <= per_key - coalesce((select rk.n from running_keys rk
                                          where rk.k = r.concurrency_key), 0)
        order by r.priority, r.next_run_at, r.id
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
              null::text;
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
            null::text, null::boolean, reason;
    end if;
end;
$$;
