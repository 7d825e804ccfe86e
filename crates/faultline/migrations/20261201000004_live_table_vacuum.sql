-- The live table churns: every job is inserted, updated by its claim and deleted by the move to
-- history, so it leaves three dead row versions behind while holding only the live backlog.
-- Postgres' default autovacuum waits until a fifth of the table is dead, throttled; on a queue
-- that never catches up, and the table and its indexes bloat. Vacuum it on a fixed number of
-- dead rows, unthrottled: each pass is small because the table is.
alter table faultline.jobs set (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
