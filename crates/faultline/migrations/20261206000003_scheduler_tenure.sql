-- Downtime judged from the scheduler's tenure, not from how long a pass took (issue 28): the
-- clock remembers which tenure (one maintainer term's scheduler) ticked last. Ticks of the same
-- tenure are continuous up-time however far apart (a pass over 1,500 schedules on a loaded
-- machine took 3.03 s, just over the 3 s gap, and the next pass turned a canary's slot into a
-- misfire); a tick of another tenure is judged by the gap, as before. Null for the existing
-- row: its next tick is judged by the gap.
alter table faultline.scheduler_clock add column tenure uuid;
