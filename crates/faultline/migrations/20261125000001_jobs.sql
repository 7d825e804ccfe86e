-- The job table and every database-side guard on it.
--
-- Everything lives in the `faultline` schema (created by `faultline::migrate` before this runs) so
-- that the queue can share a database with the application that enqueues into it, inside that
-- application's own transactions, without clashing with its tables.

-- Fencing tokens. A sequence rather than a random value: tokens only ever grow, so a handler can
-- hand its token to an external system that rejects any write carrying a smaller token than the
-- last one it saw (the classic fencing-token pattern). Postgres WAL-logs sequences ahead of use,
-- so a crash or an immediate shutdown can skip values but never hand one out twice.
create sequence faultline.lease_token_seq as bigint;

create table faultline.jobs (
    id                  uuid        primary key,
    queue               text        not null default 'default',
    kind                text        not null,
    payload             jsonb       not null default '{}'::jsonb,
    state               text        not null default 'queued',
    priority            smallint    not null default 0,
    attempts            integer     not null default 0,
    max_attempts        integer     not null default 5,
    -- Not eligible before this time: scheduling (run_at) and retry backoff.
    next_run_at         timestamptz not null default now(),
    -- Per-job execution timeout; null means the worker's per-kind default.
    timeout_ms          integer,
    -- Lease. `lease_expires_at` is set exactly while `running`; `lease_owner` and `lease_token`
    -- are kept after the job leaves `running` so that one can see who ran it last, and so that
    -- the holder of a cancelled job can be told "cancelled" rather than "superseded".
    lease_owner         text,
    lease_expires_at    timestamptz,
    lease_token         bigint,
    -- Set by the reaper when it takes a job back from an expired lease; the claim that picks the
    -- job up again clears it and reports a recovery.
    needs_recovery      boolean     not null default false,
    idempotency_key     text,
    -- sha256 of the canonical enqueue request, so that a replay (same key, same request) can be
    -- told from a conflict (same key, different request).
    request_fingerprint bytea,
    last_error          text,
    -- Every failed attempt: [{attempt, worker, at, error, reason}], oldest first.
    errors              jsonb       not null default '[]'::jsonb,
    created_at          timestamptz not null default now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz not null default now(),

    constraint jobs_state_check
        check (state in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    constraint jobs_queue_check check (length(queue) between 1 and 255),
    constraint jobs_kind_check check (length(kind) between 1 and 255),
    constraint jobs_max_attempts_check check (max_attempts >= 1),
    constraint jobs_attempts_check check (attempts >= 0 and attempts <= max_attempts),
    constraint jobs_timeout_check check (timeout_ms is null or timeout_ms > 0),
    constraint jobs_errors_check check (jsonb_typeof(errors) = 'array'),
    -- A running job always has a live lease to fence with; no other state has one.
    constraint jobs_lease_check check (
        (state = 'running') = (lease_expires_at is not null)
        and (state <> 'running' or (lease_owner is not null and lease_token is not null))
    ),
    -- Terminal states, and only they, carry a finish time.
    constraint jobs_finished_check check (
        (state in ('succeeded', 'failed', 'cancelled')) = (finished_at is not null)
    ),
    constraint jobs_idempotency_key_check
        check (idempotency_key is null or length(idempotency_key) between 1 and 255),
    -- One job per key, whichever API replica or transaction inserts it first.
    constraint jobs_idempotency_key_key unique (idempotency_key)
);

-- The claim query: eligible jobs of a queue in (priority, next_run_at, id) order. Partial, so it
-- holds only queued jobs and a claim never walks over running or finished ones.
create index jobs_claim_idx on faultline.jobs (queue, priority, next_run_at, id)
    where state = 'queued';

-- The reaper: running jobs by lease expiry.
create index jobs_lease_expiry_idx on faultline.jobs (lease_expires_at)
    where state = 'running';

-- The pruner: finished jobs by finish time.
create index jobs_finished_idx on faultline.jobs (finished_at)
    where state in ('succeeded', 'failed', 'cancelled');

-- Listing by state, newest first (the primary key serves the unfiltered list).
create index jobs_state_id_idx on faultline.jobs (state, id);

-- The state machine, enforced by the database itself, so that no statement (ours with a bug, or
-- an operator's hand-written UPDATE) can make a transition the model does not have. The WHEN
-- clause lists the legal transitions, so the function (which only raises) runs for illegal ones
-- alone and the hot path pays for an expression, not a function call.
create function faultline.reject_illegal_transition() returns trigger
language plpgsql as $$
begin
    raise exception 'illegal job state transition % -> % (job %)', old.state, new.state, old.id
        using errcode = 'check_violation', constraint = 'jobs_state_transition';
end;
$$;

create trigger jobs_state_transition
    before update of state on faultline.jobs
    for each row
    when (old.state is distinct from new.state and (old.state, new.state) not in (
        ('queued', 'running'),
        ('queued', 'cancelled'),
        ('running', 'queued'),
        ('running', 'succeeded'),
        ('running', 'failed'),
        ('running', 'cancelled'),
        ('failed', 'queued'),
        ('cancelled', 'queued')
    ))
    execute function faultline.reject_illegal_transition();
