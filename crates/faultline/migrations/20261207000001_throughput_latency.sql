-- Latency beside throughput, for the dashboard's per-queue charts (SPEC §14): for the jobs
-- that succeeded in each minute, how long the last attempt waited to be picked up (from the
-- moment it was due, `next_run_at` or its creation if later, to its start) and how long it
-- ran (start to finish), as the median and the 95th percentile in milliseconds. Counted by
-- the same once-a-minute pass of the elected maintainer, from history; minutes counted before
-- this migration keep null.
alter table faultline.queue_throughput
    add column wait_p50_ms double precision,
    add column wait_p95_ms double precision,
    add column run_p50_ms double precision,
    add column run_p95_ms double precision;
