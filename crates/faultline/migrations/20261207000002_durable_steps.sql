-- Durable steps, sleeps and signals (SPEC §16, docs/durable.md).
--
-- A step's result is recorded once per job and name, under the lease that ran it: the insert
-- reads the job's row `for share` with its lease token in the WHERE clause, so a holder whose
-- lease was taken back (reaped, re-claimed, cancelled) records nothing, and a re-claim cannot
-- slip in between the check and the insert (it must update that row, and waits for the
-- recording transaction). The job id is not a foreign key: a job moves between the live table
-- and history; the pruner deletes the steps and signals of jobs that are gone.
create table faultline.job_steps (
    job_id      uuid not null,
    name        text not null check (length(name) between 1 and 255),
    -- As the handler returned it (json keeps the text); null for none.
    result      json,
    attempt     int not null,
    lease_token bigint not null,
    recorded_at timestamptz not null default now(),
    primary key (job_id, name)
);

-- Signals sent to a job, kept until it is gone; the first of a name is kept, a second is
-- ignored (primary key, `on conflict do nothing`).
create table faultline.job_signals (
    job_id  uuid not null,
    name    text not null check (length(name) between 1 and 255),
    payload json,
    sent_at timestamptz not null default now(),
    primary key (job_id, name)
);

-- A job parked for a signal waits in `waiting` with what it waits for: the signal's name and
-- when the wait times out. `waiting` now means: a pending dependency, or a parked wait.
alter table faultline.jobs add column waiting_signal text, add column waiting_until timestamptz;
alter table faultline.jobs drop constraint jobs_waiting_check;
alter table faultline.jobs add constraint jobs_waiting_check
    check ((state = 'waiting') = (pending_dependencies > 0 or waiting_signal is not null));
alter table faultline.jobs add constraint jobs_waiting_signal_check
    check ((waiting_signal is null) = (waiting_until is null)
           and (waiting_signal is null or pending_dependencies = 0));

-- Parked waits that time out are found by their deadline.
create index jobs_waiting_until_idx on faultline.jobs (waiting_until)
    where waiting_signal is not null;

-- Live transitions: queued ⇄ running, waiting → queued (the last dependency succeeded, the
-- signal came, the wait timed out), and now running → waiting (a handler parks for a signal).
drop trigger jobs_state_transition on faultline.jobs;
create trigger jobs_state_transition
    before update of state on faultline.jobs
    for each row
    when (old.state is distinct from new.state and (old.state, new.state) not in (
        ('queued', 'running'),
        ('running', 'queued'),
        ('waiting', 'queued'),
        ('running', 'waiting')
    ))
    execute function faultline.reject_illegal_transition();
