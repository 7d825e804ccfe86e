-- Cluster (SPEC §11): the elected maintainer's lease and the live workers registry.

-- One row per elected role ('maintainer' today). Leadership is a lease, like a job's: the holder
-- renews it before `expires_at`; anyone may take it over once it has expired, and every takeover
-- increments `token`, so a term is named by (instance, token) and a stalled holder that resumes
-- cannot renew a term that another process has since taken. No session state (advisory locks,
-- LISTEN) is involved, so election works through PgBouncer in transaction mode.
create table faultline.leader (
    name text primary key,
    -- The holder's readable name (a worker id, or the API's process name).
    holder text not null,
    -- The holder's process instance: unique per start, so two processes given the same name
    -- cannot renew each other's term.
    instance uuid not null,
    token bigint not null,
    elected_at timestamptz not null,
    renewed_at timestamptz not null,
    expires_at timestamptz not null
);

-- `true` when (`instance`, `token`) holds `role` now, on the database clock. For statements that
-- must only run under a current term (a fence): `... where faultline.leader_is_current(...)`.
create function faultline.leader_is_current(role text, instance uuid, token bigint)
returns boolean
language sql stable
as $$
    select exists (
        select 1 from faultline.leader l
        where l.name = role and l.instance = leader_is_current.instance
          and l.token = leader_is_current.token and l.expires_at > now()
    )
$$;

-- Every worker process, refreshed with its heartbeat. A row whose `expires_at` has passed is a
-- worker that stopped heartbeating: it is not listed, and the leader deletes it.
create table faultline.workers (
    id text primary key,
    instance uuid not null,
    queues text[] not null,
    concurrency integer not null,
    prefetch integer not null,
    inflight integer not null,
    started_at timestamptz not null,
    last_seen_at timestamptz not null,
    expires_at timestamptz not null
);
