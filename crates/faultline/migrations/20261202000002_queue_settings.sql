-- Flow control (SPEC §12): per-queue settings, enforced in the claim across every worker.

create table faultline.queue_settings (
    queue             text primary key,
    -- Claims take nothing from a paused queue; enqueues are still accepted.
    paused            boolean not null default false,
    -- At most this many jobs of the queue running at once, all workers together (null: none).
    concurrency_limit integer check (concurrency_limit between 1 and 1000000),
    -- At most rate_count job starts per rate_period_ms, all workers together (null: none).
    rate_count        integer check (rate_count between 1 and 1000000),
    rate_period_ms    integer check (rate_period_ms between 1 and 86400000),
    updated_at        timestamptz not null default now(),
    constraint queue_settings_rate_check check ((rate_count is null) = (rate_period_ms is null))
);

-- The starts of rate-limited queues within their current period: a sliding log, written and
-- pruned by the limited claim under the queue's settings row lock.
create table faultline.queue_starts (
    queue text not null,
    at    timestamptz not null
);
create index queue_starts_queue_at_idx on faultline.queue_starts (queue, at);
