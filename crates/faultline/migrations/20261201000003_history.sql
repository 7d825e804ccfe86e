-- Live jobs and history apart.
--
-- `faultline.jobs` keeps only live jobs (queued, running): the claim, the reports and the
-- counts touch a table whose size follows the live backlog. A job that finishes (succeeded,
-- failed, cancelled) is moved, in the transition that finishes it, to `faultline.job_history`,
-- partitioned by finish time, so that retention drops whole partitions: no DELETE, no dead
-- tuples, no vacuum debt from history. `faultline.all_jobs` reads both.

create table faultline.job_history (
    id                  uuid        not null,
    queue               text        not null,
    kind                text        not null,
    payload             json        not null,
    state               text        not null,
    priority            smallint    not null,
    attempts            integer     not null,
    max_attempts        integer     not null,
    next_run_at         timestamptz not null,
    timeout_ms          integer,
    lease_owner         text,
    lease_expires_at    timestamptz,
    lease_token         bigint,
    needs_recovery      boolean     not null default false,
    idempotency_key     text,
    request_fingerprint bytea,
    last_error          text,
    errors              jsonb       not null default '[]'::jsonb,
    created_at          timestamptz not null,
    started_at          timestamptz,
    finished_at         timestamptz not null,
    updated_at          timestamptz not null,
    constraint job_history_state_check check (state in ('succeeded', 'failed', 'cancelled')),
    constraint job_history_lease_check check (lease_expires_at is null),
    primary key (id, finished_at)
) partition by range (finished_at);

-- Rows no partition covers (history written while no maintainer had made the partition for
-- the hour, and every row this migration moves) land here; retention deletes them in batches.
create table faultline.job_history_default partition of faultline.job_history default;

-- Idempotency keys stay unique while their job is retained: the live table's unique index
-- covers live jobs, and an enqueue that wins it checks this index of history before it commits
-- (see store/enqueue.rs for why that closes the race with a job finishing at the same moment).
create index job_history_idempotency_key_idx on faultline.job_history (idempotency_key)
    where idempotency_key is not null;

-- Listing history by state, newest first.
create index job_history_state_id_idx on faultline.job_history (state, id);

-- History is written once: a finished job changes only by leaving (retry moves it back to the
-- live table). Any UPDATE of its state is refused like an illegal transition.
create trigger job_history_state_transition
    before update of state on faultline.job_history
    for each row
    when (old.state is distinct from new.state)
    execute function faultline.reject_illegal_transition();

-- Finished jobs per queue and state, kept by the transitions that move jobs into and out of
-- history and by retention, so that counting them costs O(queues), not O(history). Sharded:
-- each statement adds to one of 16 rows at random, so concurrent completions rarely wait on one
-- counter row.
create table faultline.queue_finished_counts (
    queue text     not null,
    state text     not null,
    shard smallint not null,
    n     bigint   not null,
    primary key (queue, state, shard)
);

-- The partition width, fixed by the first maintainer that makes a partition (every process
-- must cut history the same way, or their partitions would overlap).
create table faultline.history_layout (
    singleton     boolean primary key default true check (singleton),
    width_seconds integer not null check (width_seconds between 60 and 86400)
);

-- Existing finished jobs move now (into the default partition), every one readable by id as
-- before and its key still enforced.
insert into faultline.job_history
select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at, timeout_ms,
       lease_owner, null, lease_token, needs_recovery, idempotency_key, request_fingerprint,
       last_error, errors, created_at, started_at, finished_at, updated_at
from faultline.jobs
where state in ('succeeded', 'failed', 'cancelled');

insert into faultline.queue_finished_counts (queue, state, shard, n)
select queue, state, 0, count(*) from faultline.job_history group by queue, state;

delete from faultline.jobs where state in ('succeeded', 'failed', 'cancelled');

-- The live table holds live states only; its indexes for finished jobs go.
drop index faultline.jobs_finished_idx;
drop index faultline.jobs_state_id_idx;
alter table faultline.jobs drop constraint jobs_finished_check;
alter table faultline.jobs drop constraint jobs_state_check;
alter table faultline.jobs add constraint jobs_state_check
    check (state in ('queued', 'running'));
alter table faultline.jobs add constraint jobs_finished_check check (finished_at is null);

-- Live transitions are queued ⇄ running; every other transition is a move between the tables.
drop trigger jobs_state_transition on faultline.jobs;
create trigger jobs_state_transition
    before update of state on faultline.jobs
    for each row
    when (old.state is distinct from new.state and (old.state, new.state) not in (
        ('queued', 'running'),
        ('running', 'queued')
    ))
    execute function faultline.reject_illegal_transition();

-- Every job, live or finished, as one relation: for reads and for operators.
create view faultline.all_jobs as
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at
    from faultline.jobs
    union all
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at
    from faultline.job_history;
