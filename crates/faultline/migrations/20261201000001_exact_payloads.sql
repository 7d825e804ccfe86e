-- Payloads come back exactly as the producer sent them.
--
-- `jsonb` normalises what it stores: it drops duplicate keys, reorders keys, rewrites numbers
-- (`1e2` comes back as `100`) and refuses the escape `\u0000` outright. A queue must hand its
-- handler what the producer sent, so the payload is kept as `json`, which stores the text as
-- given once it has checked that it is JSON. Nothing queries inside payloads, so no operator or
-- index is lost. Existing rows are converted in place (their text is jsonb's rendering, which is
-- what they have been returning all along).
alter table faultline.jobs alter column payload drop default;
alter table faultline.jobs alter column payload type json using payload::json;
alter table faultline.jobs alter column payload set default '{}'::json;

-- Times stay inside what every reader can represent (chrono, RFC 3339 clients): the API and the
-- flags check this at the edge; the constraint is the backstop for any other writer. An earlier
-- release let a huge --retry-cap push next_run_at past year 9999 (such a row could not be read
-- back); those rows are brought back into range first (they were never going to run anyway).
update faultline.jobs
set next_run_at = '9999-12-31 23:59:59+00'
where next_run_at > '9999-12-31 23:59:59.999999+00';
alter table faultline.jobs add constraint jobs_next_run_at_range
    check (next_run_at between '0001-01-01 00:00:00+00' and '9999-12-31 23:59:59.999999+00');
