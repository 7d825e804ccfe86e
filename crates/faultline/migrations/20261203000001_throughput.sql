-- Per-queue throughput by minute, for the dashboard (SPEC §14): jobs finished in each minute,
-- by outcome, counted once per minute by the elected maintainer from history, so the hot path
-- writes nothing more and a chart reads at most a few hundred small rows.

-- History rows arrive in finish order, so a BRIN index on finished_at is a few pages and costs
-- an insert next to nothing, and a count of one minute reads only that minute's blocks.
create index job_history_finished_at_brin on faultline.job_history using brin (finished_at);

create table faultline.queue_throughput (
    minute timestamptz not null,
    queue text not null,
    succeeded bigint not null,
    failed bigint not null,
    cancelled bigint not null,
    primary key (minute, queue)
);
-- The minutes sampled so far (also for minutes in which no queue finished anything), so that a
-- new maintainer knows where the last one stopped.
create table faultline.throughput_sampled (
    minute timestamptz primary key
);
