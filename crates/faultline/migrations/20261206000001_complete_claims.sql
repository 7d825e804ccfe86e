-- Every claim returns a complete job (issue 28): the limited claim's row type predates results,
-- dependencies and uniqueness, so a job claimed from a limited queue came back without them
-- (decoded as defaults, silently). The function is made anew with the same body and those
-- columns appended; nothing else changes and no row is touched.

drop function faultline.claim_limited(text, text, integer, bigint);
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

