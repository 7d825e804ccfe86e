-- Uniqueness scopes (issue 17), beside idempotency keys (which stay as they are). A job may carry
-- a `unique_key` (given, or derived from its kind, queue and payload) with a scope:
--   active  (unique_period_ms null): at most one live job (queued, waiting or running) per key;
--           a new one may be created as soon as the last one has finished.
--   period  (unique_period_ms set): at most one job per key enqueued within any period that
--           starts at an enqueue that created a job.
-- Both are enforced by the database, so they hold across API replicas and races.
-- Every existing job keeps its row as it is: the new columns are null (no uniqueness).

alter table faultline.jobs
    add column unique_key text,
    add column unique_period_ms bigint,
    add constraint jobs_unique_period_ms_check
        check (unique_period_ms is null or (unique_period_ms > 0 and unique_key is not null));
alter table faultline.job_history
    add column unique_key text,
    add column unique_period_ms bigint;

-- Active scope: the live table holds exactly the live jobs, so a partial unique index on it is
-- "at most one live job per key". Partial, so a job without a key writes no entry; the columns
-- never change after the insert, so the index keeps heartbeats and claims HOT-eligible.
create unique index jobs_unique_active_idx on faultline.jobs (unique_key)
    where unique_key is not null and unique_period_ms is null;

-- Period scope: one row per key, naming the job that opened the current period. An enqueue
-- takes the key with an upsert that only overwrites a row whose period has ended (or whose job
-- no longer exists), so concurrent enqueues serialise on the row; rows whose period ended are
-- deleted by the pruner.
create table faultline.unique_periods (
    unique_key text primary key,
    job_id uuid not null,
    expires_at timestamptz not null
);
create index unique_periods_expires_at_idx on faultline.unique_periods (expires_at);

create or replace view faultline.all_jobs as
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at, concurrency_key, result, depends_on, pending_dependencies,
           has_dependents, unique_key, unique_period_ms
    from faultline.jobs
    union all
    select id, queue, kind, payload, state, priority, attempts, max_attempts, next_run_at,
           timeout_ms, lease_owner, lease_expires_at, lease_token, needs_recovery,
           idempotency_key, request_fingerprint, last_error, errors, created_at, started_at,
           finished_at, updated_at, concurrency_key, result, depends_on, 0, has_dependents,
           unique_key, unique_period_ms
    from faultline.job_history;
