-- The schema `faultline` as the migrations leave it (pg_dump --schema-only),
-- checked against a migrated database by the test suite
-- (ops::schema::docs_schema_sql_is_the_schema_the_migrations_make). Do not edit:
-- add a migration, then run `make schema`.

CREATE SCHEMA faultline;

CREATE FUNCTION faultline.assert_lease(job uuid, token bigint) RETURNS void
    LANGUAGE plpgsql
    AS $$
begin
    perform 1 from faultline.jobs j
    where j.id = job and j.lease_token = token
      and j.lease_expires_at is not null and j.lease_expires_at > clock_timestamp()
    for share;
    if not found then
        raise exception 'lease % of job % is not current', token, job
            using errcode = 'FL001',
                  hint = 'the job was taken back (lease expired), finished, cancelled or claimed again; roll back';
    end if;
end;
$$;

CREATE FUNCTION faultline.cancel_dependents(p_roots uuid[], p_causes uuid[], p_cause_states text[]) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION faultline.claim_limited(p_queue text, p_worker text, p_want integer, p_ttl_ms bigint) RETURNS TABLE(id uuid, queue text, kind text, payload json, state text, priority smallint, attempts integer, max_attempts integer, next_run_at timestamp with time zone, timeout_ms integer, lease_owner text, lease_expires_at timestamp with time zone, lease_token bigint, idempotency_key text, last_error text, errors jsonb, created_at timestamp with time zone, started_at timestamp with time zone, finished_at timestamp with time zone, updated_at timestamp with time zone, concurrency_key text, recovered boolean, throttled text, traceparent text, result json, depends_on uuid[], pending_dependencies integer, unique_key text, unique_period_ms bigint)
    LANGUAGE plpgsql
    AS $$
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
        -- From the live counts, not the running rows: under a held horizon the running index
        -- holds an entry for every job finished since (see the migration `live_counts`).
        select coalesce(sum(c.n), 0) into n
        from (select lc.n from faultline.live_counts lc
              where lc.queue = p_queue and lc.state = 'running'
              union all
              select d.n from faultline.live_count_deltas d
              where d.queue = p_queue and d.state = 'running') c;
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
    lanes as (
        select l.priority,
               coalesce((select m.low from faultline.lane_marks m
                         where m.queue = l.queue and m.priority = l.priority
                         order by m.id desc limit 1), '-infinity') as low
        from faultline.lanes l
        where l.queue = p_queue
    ),
    locked as (
        -- Each lane from its newest mark (as the plain claim does: see `lane_marks`), merged in
        -- the lanes' order. A key already at its limit is passed over here, before the LIMIT,
        -- so its backlog cannot hide the jobs of other keys behind it.
        select c.*
        from lanes
        cross join lateral (
            select c.id, c.needs_recovery, c.concurrency_key, c.priority,
                   coalesce(c.eligible_at, c.next_run_at) as e, c.next_run_at
            from faultline.jobs c
            where c.state = 'queued' and c.queue = p_queue and c.priority = lanes.priority
              and coalesce(c.eligible_at, c.next_run_at) >= lanes.low
              and coalesce(c.eligible_at, c.next_run_at) <= now()
              and c.next_run_at <= now()
              and c.attempts < c.max_attempts
              and (c.concurrency_key is null
                   or coalesce((select rk.n from running_keys rk
                                where rk.k = c.concurrency_key), 0) < per_key)
            order by coalesce(c.eligible_at, c.next_run_at), c.next_run_at, c.id
            limit case when s.keyed then room * 4 else room end
            for update skip locked
        ) c
        order by c.priority, c.e, c.next_run_at, c.id
        limit case when s.keyed then room * 4 else room end
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

CREATE FUNCTION faultline.count_live_changes() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION faultline.count_live_truncated() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    delete from faultline.live_count_deltas;
    delete from faultline.live_counts;
    return null;
end;
$$;

CREATE FUNCTION faultline.fold_live_counts() RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION faultline.lane_clock(p_queue text, p_priority smallint) RETURNS timestamp with time zone
    LANGUAGE sql
    AS $$ select clock_timestamp() $$;

CREATE FUNCTION faultline.lane_key(p_queue text, p_priority smallint) RETURNS bigint
    LANGUAGE plpgsql IMMUTABLE
    AS $$
begin
    raise exception 'faultline: lane marks are read from the live table''s locks since the migration lane_clock_by_table_lock; upgrade the process that calls faultline.lane_key';
end;
$$;

CREATE FUNCTION faultline.lanes_clock(p_queues text[], p_priorities smallint[]) RETURNS timestamp with time zone
    LANGUAGE sql
    AS $$ select clock_timestamp() $$;

CREATE FUNCTION faultline.leader_is_current(role text, instance uuid, token bigint) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    select exists (
        select 1 from faultline.leader l
        where l.name = role and l.instance = leader_is_current.instance
          and l.token = leader_is_current.token and l.expires_at > now()
    )
$$;

CREATE FUNCTION faultline.lease_is_current(job uuid, token bigint) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    select exists (
        select 1 from faultline.jobs j
        where j.id = job and j.lease_token = token
          and j.lease_expires_at is not null and j.lease_expires_at > clock_timestamp()
    )
$$;

CREATE FUNCTION faultline.place_in_lane() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if new.state = 'queued' then
        new.eligible_at := greatest(new.next_run_at, clock_timestamp());
    end if;
    insert into faultline.lanes (queue, priority) values (new.queue, new.priority)
    on conflict do nothing;
    return new;
end;
$$;

CREATE FUNCTION faultline.reject_illegal_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    raise exception 'illegal job state transition % -> % (job %)', old.state, new.state, old.id
        using errcode = 'check_violation', constraint = 'jobs_state_transition';
end;
$$;

CREATE FUNCTION faultline.settle_dependents() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE TABLE faultline._sqlx_migrations (
    version bigint NOT NULL,
    description text NOT NULL,
    installed_on timestamp with time zone DEFAULT now() NOT NULL,
    success boolean NOT NULL,
    checksum bytea NOT NULL,
    execution_time bigint NOT NULL
);

CREATE TABLE faultline.job_history (
    id uuid NOT NULL,
    queue text NOT NULL,
    kind text NOT NULL,
    payload json NOT NULL,
    state text NOT NULL,
    priority smallint NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    next_run_at timestamp with time zone NOT NULL,
    timeout_ms integer,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    lease_token bigint,
    needs_recovery boolean DEFAULT false NOT NULL,
    idempotency_key text,
    request_fingerprint bytea,
    last_error text,
    errors jsonb DEFAULT '[]'::jsonb NOT NULL,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    concurrency_key text,
    result json,
    depends_on uuid[] DEFAULT '{}'::uuid[] NOT NULL,
    has_dependents boolean DEFAULT false NOT NULL,
    unique_key text,
    unique_period_ms bigint,
    traceparent text,
    CONSTRAINT job_history_lease_check CHECK ((lease_expires_at IS NULL)),
    CONSTRAINT job_history_state_check CHECK ((state = ANY (ARRAY['succeeded'::text, 'failed'::text, 'cancelled'::text])))
)
PARTITION BY RANGE (finished_at);

CREATE TABLE faultline.jobs (
    id uuid NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    kind text NOT NULL,
    payload json DEFAULT '{}'::json NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    priority smallint DEFAULT 0 NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    next_run_at timestamp with time zone DEFAULT now() NOT NULL,
    timeout_ms integer,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    lease_token bigint,
    needs_recovery boolean DEFAULT false NOT NULL,
    idempotency_key text,
    request_fingerprint bytea,
    last_error text,
    errors jsonb DEFAULT '[]'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    concurrency_key text,
    result json,
    depends_on uuid[] DEFAULT '{}'::uuid[] NOT NULL,
    pending_dependencies integer DEFAULT 0 NOT NULL,
    has_dependents boolean DEFAULT false NOT NULL,
    unique_key text,
    unique_period_ms bigint,
    traceparent text,
    eligible_at timestamp with time zone,
    waiting_signal text,
    waiting_until timestamp with time zone,
    CONSTRAINT jobs_attempts_check CHECK (((attempts >= 0) AND (attempts <= max_attempts))),
    CONSTRAINT jobs_errors_check CHECK ((jsonb_typeof(errors) = 'array'::text)),
    CONSTRAINT jobs_finished_check CHECK ((finished_at IS NULL)),
    CONSTRAINT jobs_idempotency_key_check CHECK (((idempotency_key IS NULL) OR ((length(idempotency_key) >= 1) AND (length(idempotency_key) <= 255)))),
    CONSTRAINT jobs_kind_check CHECK (((length(kind) >= 1) AND (length(kind) <= 255))),
    CONSTRAINT jobs_lease_check CHECK ((((state = 'running'::text) = (lease_expires_at IS NOT NULL)) AND ((state <> 'running'::text) OR ((lease_owner IS NOT NULL) AND (lease_token IS NOT NULL))))),
    CONSTRAINT jobs_max_attempts_check CHECK ((max_attempts >= 1)),
    CONSTRAINT jobs_next_run_at_range CHECK (((next_run_at >= '0001-01-01 00:00:00+00'::timestamp with time zone) AND (next_run_at <= '9999-12-31 23:59:59.999999+00'::timestamp with time zone))),
    CONSTRAINT jobs_pending_dependencies_check CHECK ((pending_dependencies >= 0)),
    CONSTRAINT jobs_queue_check CHECK (((length(queue) >= 1) AND (length(queue) <= 255))),
    CONSTRAINT jobs_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'running'::text, 'waiting'::text]))),
    CONSTRAINT jobs_timeout_check CHECK (((timeout_ms IS NULL) OR (timeout_ms > 0))),
    CONSTRAINT jobs_unique_period_ms_check CHECK (((unique_period_ms IS NULL) OR ((unique_period_ms > 0) AND (unique_key IS NOT NULL)))),
    CONSTRAINT jobs_waiting_check CHECK (((state = 'waiting'::text) = ((pending_dependencies > 0) OR (waiting_signal IS NOT NULL)))),
    CONSTRAINT jobs_waiting_signal_check CHECK ((((waiting_signal IS NULL) = (waiting_until IS NULL)) AND ((waiting_signal IS NULL) OR (pending_dependencies = 0))))
)
WITH (fillfactor='80', autovacuum_vacuum_scale_factor='0.0', autovacuum_vacuum_threshold='10000', autovacuum_vacuum_insert_scale_factor='0.0', autovacuum_vacuum_insert_threshold='10000', autovacuum_vacuum_cost_delay='0', autovacuum_analyze_scale_factor='0.05');

CREATE VIEW faultline.all_jobs AS
 SELECT jobs.id,
    jobs.queue,
    jobs.kind,
    jobs.payload,
    jobs.state,
    jobs.priority,
    jobs.attempts,
    jobs.max_attempts,
    jobs.next_run_at,
    jobs.timeout_ms,
    jobs.lease_owner,
    jobs.lease_expires_at,
    jobs.lease_token,
    jobs.needs_recovery,
    jobs.idempotency_key,
    jobs.request_fingerprint,
    jobs.last_error,
    jobs.errors,
    jobs.created_at,
    jobs.started_at,
    jobs.finished_at,
    jobs.updated_at,
    jobs.concurrency_key,
    jobs.result,
    jobs.depends_on,
    jobs.pending_dependencies,
    jobs.has_dependents,
    jobs.unique_key,
    jobs.unique_period_ms,
    jobs.traceparent
   FROM faultline.jobs
UNION ALL
 SELECT job_history.id,
    job_history.queue,
    job_history.kind,
    job_history.payload,
    job_history.state,
    job_history.priority,
    job_history.attempts,
    job_history.max_attempts,
    job_history.next_run_at,
    job_history.timeout_ms,
    job_history.lease_owner,
    job_history.lease_expires_at,
    job_history.lease_token,
    job_history.needs_recovery,
    job_history.idempotency_key,
    job_history.request_fingerprint,
    job_history.last_error,
    job_history.errors,
    job_history.created_at,
    job_history.started_at,
    job_history.finished_at,
    job_history.updated_at,
    job_history.concurrency_key,
    job_history.result,
    job_history.depends_on,
    0 AS pending_dependencies,
    job_history.has_dependents,
    job_history.unique_key,
    job_history.unique_period_ms,
    job_history.traceparent
   FROM faultline.job_history;

CREATE TABLE faultline.history_layout (
    singleton boolean DEFAULT true NOT NULL,
    width_seconds integer NOT NULL,
    CONSTRAINT history_layout_singleton_check CHECK (singleton),
    CONSTRAINT history_layout_width_seconds_check CHECK (((width_seconds >= 60) AND (width_seconds <= 86400)))
);

CREATE TABLE faultline.job_edges (
    parent uuid NOT NULL,
    child uuid NOT NULL
);

CREATE TABLE faultline.job_history_default (
    id uuid NOT NULL,
    queue text NOT NULL,
    kind text NOT NULL,
    payload json NOT NULL,
    state text NOT NULL,
    priority smallint NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    next_run_at timestamp with time zone NOT NULL,
    timeout_ms integer,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    lease_token bigint,
    needs_recovery boolean DEFAULT false NOT NULL,
    idempotency_key text,
    request_fingerprint bytea,
    last_error text,
    errors jsonb DEFAULT '[]'::jsonb NOT NULL,
    created_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    concurrency_key text,
    result json,
    depends_on uuid[] DEFAULT '{}'::uuid[] NOT NULL,
    has_dependents boolean DEFAULT false NOT NULL,
    unique_key text,
    unique_period_ms bigint,
    traceparent text,
    CONSTRAINT job_history_lease_check CHECK ((lease_expires_at IS NULL)),
    CONSTRAINT job_history_state_check CHECK ((state = ANY (ARRAY['succeeded'::text, 'failed'::text, 'cancelled'::text])))
);

CREATE TABLE faultline.job_signals (
    job_id uuid NOT NULL,
    name text NOT NULL,
    payload json,
    sent_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT job_signals_name_check CHECK (((length(name) >= 1) AND (length(name) <= 255)))
);

CREATE TABLE faultline.job_steps (
    job_id uuid NOT NULL,
    name text NOT NULL,
    result json,
    attempt integer NOT NULL,
    lease_token bigint NOT NULL,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT job_steps_name_check CHECK (((length(name) >= 1) AND (length(name) <= 255)))
);

CREATE TABLE faultline.lane_marks (
    id bigint NOT NULL,
    queue text NOT NULL,
    priority smallint NOT NULL,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    low timestamp with time zone NOT NULL
);

ALTER TABLE faultline.lane_marks ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME faultline.lane_marks_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE faultline.lanes (
    queue text NOT NULL,
    priority smallint NOT NULL
);

CREATE TABLE faultline.leader (
    name text NOT NULL,
    holder text NOT NULL,
    instance uuid NOT NULL,
    token bigint NOT NULL,
    elected_at timestamp with time zone NOT NULL,
    renewed_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE SEQUENCE faultline.lease_token_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE faultline.live_count_deltas (
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
);

CREATE TABLE faultline.live_counts (
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
);

CREATE TABLE faultline.queue_finished_counts (
    queue text NOT NULL,
    state text NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL
);

CREATE TABLE faultline.queue_settings (
    queue text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    concurrency_limit integer,
    rate_count integer,
    rate_period_ms integer,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    key_concurrency integer,
    keyed boolean DEFAULT false NOT NULL,
    CONSTRAINT queue_settings_concurrency_limit_check CHECK (((concurrency_limit >= 1) AND (concurrency_limit <= 1000000))),
    CONSTRAINT queue_settings_key_concurrency_check CHECK (((key_concurrency >= 1) AND (key_concurrency <= 1000000))),
    CONSTRAINT queue_settings_rate_check CHECK (((rate_count IS NULL) = (rate_period_ms IS NULL))),
    CONSTRAINT queue_settings_rate_count_check CHECK (((rate_count >= 1) AND (rate_count <= 1000000))),
    CONSTRAINT queue_settings_rate_period_ms_check CHECK (((rate_period_ms >= 1) AND (rate_period_ms <= 86400000)))
);

CREATE TABLE faultline.queue_starts (
    queue text NOT NULL,
    at timestamp with time zone NOT NULL
);

CREATE TABLE faultline.queue_throughput (
    minute timestamp with time zone NOT NULL,
    queue text NOT NULL,
    succeeded bigint NOT NULL,
    failed bigint NOT NULL,
    cancelled bigint NOT NULL,
    wait_p50_ms double precision,
    wait_p95_ms double precision,
    run_p50_ms double precision,
    run_p95_ms double precision
);

CREATE TABLE faultline.scheduler_clock (
    singleton boolean DEFAULT true NOT NULL,
    ticked_at timestamp with time zone NOT NULL,
    up_since timestamp with time zone NOT NULL,
    tenure uuid,
    CONSTRAINT scheduler_clock_singleton_check CHECK (singleton)
);

CREATE TABLE faultline.schedules (
    name text NOT NULL,
    cron text NOT NULL,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    kind text NOT NULL,
    payload json DEFAULT '{}'::json NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    priority smallint DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 5 NOT NULL,
    misfire text DEFAULT 'run_once'::text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    considered_until timestamp with time zone DEFAULT now() NOT NULL,
    next_run_at timestamp with time zone,
    last_run_at timestamp with time zone,
    last_job_id uuid,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT schedules_max_attempts_check CHECK ((max_attempts >= 1)),
    CONSTRAINT schedules_misfire_check CHECK ((misfire = ANY (ARRAY['run_once'::text, 'skip'::text])))
);

CREATE TABLE faultline.throughput_sampled (
    minute timestamp with time zone NOT NULL
);

CREATE TABLE faultline.unique_periods (
    unique_key text NOT NULL,
    job_id uuid NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE faultline.workers (
    id text NOT NULL,
    instance uuid NOT NULL,
    queues text[] NOT NULL,
    concurrency integer NOT NULL,
    prefetch integer NOT NULL,
    inflight integer NOT NULL,
    started_at timestamp with time zone NOT NULL,
    last_seen_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

ALTER TABLE ONLY faultline.job_history ATTACH PARTITION faultline.job_history_default DEFAULT;

ALTER TABLE ONLY faultline._sqlx_migrations
    ADD CONSTRAINT _sqlx_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY faultline.history_layout
    ADD CONSTRAINT history_layout_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY faultline.job_edges
    ADD CONSTRAINT job_edges_pkey PRIMARY KEY (parent, child);

ALTER TABLE ONLY faultline.job_history
    ADD CONSTRAINT job_history_pkey PRIMARY KEY (id, finished_at);

ALTER TABLE ONLY faultline.job_history_default
    ADD CONSTRAINT job_history_default_pkey PRIMARY KEY (id, finished_at);

ALTER TABLE ONLY faultline.job_signals
    ADD CONSTRAINT job_signals_pkey PRIMARY KEY (job_id, name);

ALTER TABLE ONLY faultline.job_steps
    ADD CONSTRAINT job_steps_pkey PRIMARY KEY (job_id, name);

ALTER TABLE ONLY faultline.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY faultline.lanes
    ADD CONSTRAINT lanes_pkey PRIMARY KEY (queue, priority);

ALTER TABLE ONLY faultline.leader
    ADD CONSTRAINT leader_pkey PRIMARY KEY (name);

ALTER TABLE ONLY faultline.live_counts
    ADD CONSTRAINT live_counts_pkey PRIMARY KEY (queue, state);

ALTER TABLE ONLY faultline.queue_finished_counts
    ADD CONSTRAINT queue_finished_counts_pkey PRIMARY KEY (queue, state, shard);

ALTER TABLE ONLY faultline.queue_settings
    ADD CONSTRAINT queue_settings_pkey PRIMARY KEY (queue);

ALTER TABLE ONLY faultline.queue_throughput
    ADD CONSTRAINT queue_throughput_pkey PRIMARY KEY (minute, queue);

ALTER TABLE ONLY faultline.scheduler_clock
    ADD CONSTRAINT scheduler_clock_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY faultline.schedules
    ADD CONSTRAINT schedules_pkey PRIMARY KEY (name);

ALTER TABLE ONLY faultline.throughput_sampled
    ADD CONSTRAINT throughput_sampled_pkey PRIMARY KEY (minute);

ALTER TABLE ONLY faultline.unique_periods
    ADD CONSTRAINT unique_periods_pkey PRIMARY KEY (unique_key);

ALTER TABLE ONLY faultline.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (id);

CREATE INDEX job_history_depends_on_idx ON ONLY faultline.job_history USING gin (depends_on) WITH (fastupdate=off) WHERE (cardinality(depends_on) > 0);

CREATE INDEX job_history_default_depends_on_idx ON faultline.job_history_default USING gin (depends_on) WITH (fastupdate=off) WHERE (cardinality(depends_on) > 0);

CREATE INDEX job_history_finished_at_brin ON ONLY faultline.job_history USING brin (finished_at);

CREATE INDEX job_history_default_finished_at_idx ON faultline.job_history_default USING brin (finished_at);

CREATE INDEX job_history_idempotency_key_idx ON ONLY faultline.job_history USING btree (idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX job_history_default_idempotency_key_idx ON faultline.job_history_default USING btree (idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX job_history_state_id_idx ON ONLY faultline.job_history USING btree (state, id);

CREATE INDEX job_history_default_state_id_idx ON faultline.job_history_default USING btree (state, id);

CREATE INDEX jobs_depends_on_idx ON faultline.jobs USING gin (depends_on) WITH (fastupdate=off) WHERE (cardinality(depends_on) > 0);

CREATE UNIQUE INDEX jobs_idempotency_key_idx ON faultline.jobs USING btree (idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX jobs_lane_idx ON faultline.jobs USING btree (queue, priority, COALESCE(eligible_at, next_run_at), next_run_at, id) WHERE (state = 'queued'::text);

CREATE INDEX jobs_running_idx ON faultline.jobs USING btree (queue) WHERE (state = 'running'::text);

CREATE INDEX jobs_running_key_idx ON faultline.jobs USING btree (queue, concurrency_key) WHERE ((state = 'running'::text) AND (concurrency_key IS NOT NULL));

CREATE UNIQUE INDEX jobs_unique_active_idx ON faultline.jobs USING btree (unique_key) WHERE ((unique_key IS NOT NULL) AND (unique_period_ms IS NULL));

CREATE INDEX jobs_waiting_until_idx ON faultline.jobs USING btree (waiting_until) WHERE (waiting_signal IS NOT NULL);

CREATE INDEX lane_marks_newest_idx ON faultline.lane_marks USING btree (queue, priority, id DESC);

CREATE INDEX queue_starts_queue_at_idx ON faultline.queue_starts USING btree (queue, at);

CREATE INDEX schedules_due_idx ON faultline.schedules USING btree (next_run_at) WHERE (NOT paused);

CREATE INDEX unique_periods_expires_at_idx ON faultline.unique_periods USING btree (expires_at);

ALTER INDEX faultline.job_history_depends_on_idx ATTACH PARTITION faultline.job_history_default_depends_on_idx;

ALTER INDEX faultline.job_history_finished_at_brin ATTACH PARTITION faultline.job_history_default_finished_at_idx;

ALTER INDEX faultline.job_history_idempotency_key_idx ATTACH PARTITION faultline.job_history_default_idempotency_key_idx;

ALTER INDEX faultline.job_history_pkey ATTACH PARTITION faultline.job_history_default_pkey;

ALTER INDEX faultline.job_history_state_id_idx ATTACH PARTITION faultline.job_history_default_state_id_idx;

CREATE TRIGGER job_history_settle_dependents AFTER INSERT ON faultline.job_history REFERENCING NEW TABLE AS finished FOR EACH STATEMENT EXECUTE FUNCTION faultline.settle_dependents();

CREATE TRIGGER job_history_state_transition BEFORE UPDATE OF state ON faultline.job_history FOR EACH ROW WHEN ((old.state IS DISTINCT FROM new.state)) EXECUTE FUNCTION faultline.reject_illegal_transition();

CREATE TRIGGER jobs_count_deleted AFTER DELETE ON faultline.jobs REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION faultline.count_live_changes();

CREATE TRIGGER jobs_count_inserted AFTER INSERT ON faultline.jobs REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION faultline.count_live_changes();

CREATE TRIGGER jobs_count_truncated AFTER TRUNCATE ON faultline.jobs FOR EACH STATEMENT EXECUTE FUNCTION faultline.count_live_truncated();

CREATE TRIGGER jobs_count_updated AFTER UPDATE ON faultline.jobs REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION faultline.count_live_changes();

CREATE TRIGGER jobs_place_inserted BEFORE INSERT ON faultline.jobs FOR EACH ROW WHEN ((new.eligible_at IS NULL)) EXECUTE FUNCTION faultline.place_in_lane();

CREATE TRIGGER jobs_place_requeued BEFORE UPDATE OF state ON faultline.jobs FOR EACH ROW WHEN (((new.state = 'queued'::text) AND (old.state IS DISTINCT FROM 'queued'::text) AND (NOT (new.eligible_at IS DISTINCT FROM old.eligible_at)))) EXECUTE FUNCTION faultline.place_in_lane();

CREATE TRIGGER jobs_state_transition BEFORE UPDATE OF state ON faultline.jobs FOR EACH ROW WHEN (((old.state IS DISTINCT FROM new.state) AND (((((old.state <> 'queued'::text) OR (new.state <> 'running'::text)) AND ((old.state <> 'running'::text) OR (new.state <> 'queued'::text))) AND ((old.state <> 'waiting'::text) OR (new.state <> 'queued'::text))) AND ((old.state <> 'running'::text) OR (new.state <> 'waiting'::text))))) EXECUTE FUNCTION faultline.reject_illegal_transition();

