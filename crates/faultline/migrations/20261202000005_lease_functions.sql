-- Fencing in SQL (SPEC §13): an application's own statements and triggers can check that a job's
-- lease is still the one they act under.

-- Whether `token` is the live lease of job `job`: the job is running under exactly that lease
-- (fencing tokens come from one sequence, so a token names one claim of one job), and the lease
-- has not run out on the database's clock. An expired lease that the reaper has not taken back
-- yet is no longer current: its holder must not start new effects.
create function faultline.lease_is_current(job uuid, token bigint)
returns boolean
language sql stable
as $$
    select exists (
        select 1 from faultline.jobs j
        where j.id = job and j.lease_token = token
          and j.lease_expires_at is not null and j.lease_expires_at > clock_timestamp()
    )
$$;

-- Raise SQLSTATE FL001 unless `token` is the live lease of job `job`; otherwise lock the job's
-- row (FOR SHARE) until the caller's transaction ends, so that the reaper, a cancel or a
-- completion waits for it: what the caller writes in that transaction is written while the
-- lease held.
create function faultline.assert_lease(job uuid, token bigint)
returns void
language plpgsql volatile
as $$
begin
    perform 1 from faultline.jobs j
    where j.id = job and j.lease_token = token
      and j.lease_expires_at is not null and j.lease_expires_at > clock_timestamp()
    for share;
    if not found then
        raise exception 'lease % of job % is not current', token, job
            using errcode = 'FL001',
                  hint = 'the job was taken back (lease expired), finished, cancelled or claimed again; roll back';
    end if;
end;
$$;
