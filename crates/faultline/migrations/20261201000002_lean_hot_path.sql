-- A leaner hot path: fewer index writes per transition, heartbeats that can be HOT updates.
--
-- Every index on the job table is written by every non-HOT update, and a heartbeat that
-- touches an indexed column is never HOT. The lease-expiry index made every heartbeat (every
-- ttl/3 for every running job) a full update writing every index. The reaper needs only the
-- running jobs, which are few (at most the workers' total concurrency): an index of running
-- jobs by queue serves it (it reads each running row's expiry from the heap), serves the
-- per-queue running counts, and touches no column a heartbeat changes.
create index jobs_running_idx on faultline.jobs (queue) where state = 'running';
drop index faultline.jobs_lease_expiry_idx;

-- Room on each page for a heartbeat's new row version, so it can stay on the page (HOT).
alter table faultline.jobs set (fillfactor = 80);

-- Idempotency keys: a partial unique index holds only keyed jobs, so the many jobs without a
-- key write no entry into it on insert or on any later transition. Created before the
-- constraint is dropped (in this one transaction), so uniqueness is never unenforced.
create unique index jobs_idempotency_key_idx on faultline.jobs (idempotency_key)
    where idempotency_key is not null;
alter table faultline.jobs drop constraint jobs_idempotency_key_key;
