-- Schedules (SPEC §12): cron in a time zone, fired by the maintainer. Exactly one job per slot
-- whatever the number of processes: the slot's job carries the idempotency key
-- `schedule:{name}:{slot in RFC 3339 UTC}`, so a second fire of a slot finds the first job.

create table faultline.schedules (
    name             text primary key,
    -- 5 fields (minute precision) or 6 (with seconds), as written.
    cron             text        not null,
    -- IANA zone the cron is read in.
    timezone         text        not null default 'UTC',
    kind             text        not null,
    payload          json        not null default '{}',
    queue            text        not null default 'default',
    priority         smallint    not null default 0,
    max_attempts     integer     not null default 5 check (max_attempts >= 1),
    -- After downtime: `run_once` enqueues one job for the latest missed slot, `skip` none.
    misfire          text        not null default 'run_once'
                                 check (misfire in ('run_once', 'skip')),
    paused           boolean     not null default false,
    -- Every slot up to here has been dealt with (fired, or missed and counted). A scheduler that
    -- finds this recent (it ticks often) fires every slot after it; one that finds it old knows
    -- nothing was up to fire the slots in between: those are misfires.
    considered_until timestamptz not null default now(),
    -- The first slot after `considered_until`, for readers.
    next_run_at      timestamptz,
    -- The slot of the last job enqueued, and the job.
    last_run_at      timestamptz,
    last_job_id      uuid,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now()
);

-- The due schedules, in the order the scheduler reads them.
create index schedules_due_idx on faultline.schedules (next_run_at) where not paused;

-- When a scheduler last ticked, and since when schedulers have ticked without a long gap: slots
-- that came due inside that up period fire; slots before it are misfires (nothing was up).
create table faultline.scheduler_clock (
    singleton boolean primary key default true check (singleton),
    ticked_at timestamptz not null,
    up_since  timestamptz not null
);
