//! docs/operations.md schedules: exactly one job per slot whatever the number of firers, none missed while
//! a scheduler is up, and after downtime `run_once` enqueues one catch-up job and `skip` none —
//! in the store, and with three real worker processes firing a every-second cron.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use faultline::schedule::{Misfire, ScheduleSpec};
use faultline::Store;
use serde_json::json;

use crate::harness::procs::Proc;
use crate::harness::{pool, wait_for, TestDb};

fn every_second(misfire: Misfire) -> ScheduleSpec {
    ScheduleSpec {
        cron: "*/1 * * * * *".into(),
        kind: "noop".into(),
        payload: json!({"from": "cron"}).into(),
        queue: Some("cron".into()),
        priority: None,
        max_attempts: None,
        timezone: None,
        misfire: Some(misfire),
        paused: None,
    }
}

/// Every job of schedule `name`, by slot (from its idempotency key), with how many jobs each
/// slot has.
async fn slots_of(db: &TestDb, name: &str) -> BTreeMap<DateTime<Utc>, i64> {
    let keys: Vec<String> = sqlx::query_scalar(
        "select idempotency_key from faultline.all_jobs where idempotency_key like $1",
    )
    .bind(format!("schedule:{name}:%"))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut slots = BTreeMap::new();
    for key in keys {
        let prefix = format!("schedule:{name}:");
        let slot: DateTime<Utc> = key.strip_prefix(&prefix).unwrap().parse().unwrap();
        *slots.entry(slot).or_insert(0) += 1;
    }
    slots
}

/// Pretend every scheduler has been down for `secs`: the clock's last tick and the schedule's
/// progress both move back.
async fn pretend_down_for(db: &TestDb, name: &str, secs: i64) {
    sqlx::query(
        "insert into faultline.scheduler_clock (singleton, ticked_at, up_since)
         values (true, now() - $1 * interval '1 second', now() - $1 * interval '1 second')
         on conflict (singleton) do update set ticked_at = excluded.ticked_at,
                                               up_since = excluded.up_since",
    )
    .bind(secs)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "update faultline.schedules
         set considered_until = now() - $2 * interval '1 second', next_run_at = now() - $2 * interval '1 second'
         where name = $1",
    )
    .bind(name)
    .bind(secs)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn put_creates_then_replaces_keeping_progress_and_refuses_bad_fields() {
    let db = TestDb::new().await;
    let store = db.store();
    let (first, created) = store
        .put_schedule("tick", &every_second(Misfire::RunOnce))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(first.timezone, "UTC");
    assert!(first.next_run_at.is_some());
    let mut spec = every_second(Misfire::Skip);
    // Kept digit for digit, as job payloads are.
    spec.payload = serde_json::from_str(r#"{"changed":1.50}"#).unwrap();
    let (second, created) = store.put_schedule("tick", &spec).await.unwrap();
    assert!(!created);
    assert_eq!(second.payload.to_string(), r#"{"changed":1.50}"#);
    assert_eq!(second.misfire, Misfire::Skip);
    for (field, edit) in [
        (
            "cron",
            Box::new(|s: &mut ScheduleSpec| s.cron = "* * *".into())
                as Box<dyn Fn(&mut ScheduleSpec)>,
        ),
        (
            "cron",
            Box::new(|s: &mut ScheduleSpec| s.cron = "0 0 31 2 *".into()),
        ),
        (
            "timezone",
            Box::new(|s: &mut ScheduleSpec| s.timezone = Some("Europe/Atlantis".into())),
        ),
        ("kind", Box::new(|s: &mut ScheduleSpec| s.kind = "".into())),
        (
            "queue",
            Box::new(|s: &mut ScheduleSpec| s.queue = Some("a b".into())),
        ),
        (
            "max_attempts",
            Box::new(|s: &mut ScheduleSpec| s.max_attempts = Some(0)),
        ),
    ] {
        let mut spec = every_second(Misfire::RunOnce);
        edit(&mut spec);
        match store.put_schedule("bad", &spec).await {
            Err(faultline::StoreError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(matches!(
        store.schedule("bad").await,
        Err(faultline::StoreError::ScheduleNotFound(_))
    ));
    store.delete_schedule("tick").await.unwrap();
    assert!(store.schedules().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_firers_at_once_and_a_stale_one_never_make_two_jobs_of_a_slot() {
    let db = TestDb::new().await;
    let a = db.store();
    let b = Store::new(pool(&db.url, 4).await);
    a.put_schedule("tick", &every_second(Misfire::RunOnce))
        .await
        .unwrap();
    // Two firers, each with its own connections (as two processes would have), over and over.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < deadline {
        let (x, y) = tokio::join!(a.fire_schedules(), b.fire_schedules());
        x.unwrap();
        y.unwrap();
    }
    let slots = slots_of(&db, "tick").await;
    assert!(slots.len() >= 2, "{slots:?}");
    assert!(slots.values().all(|n| *n == 1), "{slots:?}");
    // A firer with a stale view (its progress rewound, as if it had not seen the other's work)
    // fires the same slots again: each finds its job, nothing new is written.
    let before: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let first = *slots.keys().next().unwrap();
    sqlx::query(
        "update faultline.schedules set considered_until = $1 - interval '1 millisecond',
                next_run_at = $1 where name = 'tick'",
    )
    .bind(first)
    .execute(&db.pool)
    .await
    .unwrap();
    let again = b.fire_schedules().await.unwrap();
    assert!(again.already >= slots.len(), "{again:?}");
    let after: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Only slots that came due since can be new.
    let new_slots = slots_of(&db, "tick").await;
    assert!(new_slots.values().all(|n| *n == 1), "{new_slots:?}");
    assert_eq!(after - before, (new_slots.len() - slots.len()) as i64);
}

#[tokio::test]
async fn after_downtime_run_once_enqueues_one_catch_up_job_and_skip_none() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .put_schedule("once", &every_second(Misfire::RunOnce))
        .await
        .unwrap();
    store
        .put_schedule("skip", &every_second(Misfire::Skip))
        .await
        .unwrap();
    pretend_down_for(&db, "once", 30).await;
    pretend_down_for(&db, "skip", 30).await;
    let outcome = store.fire_schedules().await.unwrap();
    let once = slots_of(&db, "once").await;
    assert_eq!(
        once.len(),
        1,
        "one catch-up job, not one per missed slot: {once:?}"
    );
    assert!(slots_of(&db, "skip").await.is_empty());
    let missed: BTreeMap<String, u64> = outcome.misfires.into_iter().collect();
    assert!(missed["once"] >= 28, "{missed:?}");
    assert!(missed["skip"] >= 29, "{missed:?}");
    // The catch-up job is for the latest missed slot.
    let slot = *once.keys().next().unwrap();
    let age = Utc::now() - slot;
    assert!(
        age < chrono::Duration::seconds(3),
        "slot {slot} is {age} old"
    );
    let schedule = store.schedule("once").await.unwrap();
    assert_eq!(schedule.last_run_at, Some(slot));
    assert!(schedule.last_job_id.is_some());
    assert!(schedule.next_run_at.unwrap() > slot);
}

#[tokio::test]
async fn a_paused_schedule_fires_nothing_and_its_pause_is_not_a_misfire() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .put_schedule("tick", &every_second(Misfire::RunOnce))
        .await
        .unwrap();
    store.set_schedule_paused("tick", true).await.unwrap();
    pretend_down_for(&db, "tick", 10).await;
    store.fire_schedules().await.unwrap();
    assert!(slots_of(&db, "tick").await.is_empty());
    // Resumed: from now on, nothing for the time it was paused.
    let resumed = store.set_schedule_paused("tick", false).await.unwrap();
    assert!(!resumed.paused);
    let outcome = store.fire_schedules().await.unwrap();
    assert!(outcome.misfires.is_empty(), "{outcome:?}");
}

/// A `--schedules` file with two every-second schedules, one per misfire policy.
fn schedules_file() -> tempfile_path::TempPath {
    let text = r#"
[[schedule]]
name = "tick-once"
cron = "*/1 * * * * *"
kind = "noop"
queue = "cron"
misfire = "run_once"

[[schedule]]
name = "tick-skip"
cron = "*/1 * * * * *"
timezone = "Europe/Berlin"
kind = "noop"
queue = "cron"
payload = { from = "file" }
misfire = "skip"
"#;
    tempfile_path::TempPath::with(text)
}

mod tempfile_path {
    /// A file in the temp dir, removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);

    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            let path = std::env::temp_dir().join(format!(
                "faultline-schedules-{}-{}.toml",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn start_three(db: &TestDb, file: &std::path::Path) -> Vec<Proc> {
    let file = file.to_str().unwrap();
    (0..3)
        .map(|i| {
            Proc::worker(
                &db.url,
                &format!("cron-{i}"),
                &[
                    "--queues",
                    "cron",
                    "--leader-ttl",
                    "2s",
                    "--schedules",
                    file,
                ],
            )
        })
        .collect()
}

/// Consecutive seconds from the first slot at or after `from` to `to`: none missing.
fn assert_every_second(
    slots: &BTreeMap<DateTime<Utc>, i64>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) {
    let run: Vec<DateTime<Utc>> = slots
        .keys()
        .copied()
        .filter(|s| *s >= from && *s <= to)
        .collect();
    assert!(run.len() >= 2, "{run:?}");
    for pair in run.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "a slot was missed: {pair:?}"
        );
    }
    assert!(
        slots.values().all(|n| *n == 1),
        "a slot fired twice: {slots:?}"
    );
}

async fn up_since(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("select up_since from faultline.scheduler_clock")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_fire_every_second_once_and_catch_up_once_after_all_stop() {
    let db = TestDb::new().await;
    let file = schedules_file();
    let procs = start_three(&db, &file.0);
    let first_up = wait_for("a scheduler to tick", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, DateTime<Utc>>("select up_since from faultline.scheduler_clock")
            .fetch_optional(&db.pool)
            .await
            .unwrap()
    })
    .await;
    // 20 s of firing; the test reads the database, not the clock, to know it is there.
    let ran_until = wait_for("20 s of slots", Duration::from_secs(60), || async {
        let slots = slots_of(&db, "tick-once").await;
        slots
            .keys()
            .last()
            .copied()
            .filter(|last| *last - first_up >= chrono::Duration::seconds(20))
    })
    .await;
    for p in procs {
        p.terminate().await;
    }
    let stopped_at = Utc::now();
    for name in ["tick-once", "tick-skip"] {
        let slots = slots_of(&db, name).await;
        assert_every_second(&slots, first_up, ran_until);
    }
    // Down for 5 s: this wait is the downtime under test, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let procs = start_three(&db, &file.0);
    let restarted = wait_for(
        "a scheduler to tick again",
        Duration::from_secs(30),
        || async {
            let since = up_since(&db).await;
            (since > stopped_at).then_some(since)
        },
    )
    .await;
    wait_for(
        "slots after the restart",
        Duration::from_secs(30),
        || async {
            let slots = slots_of(&db, "tick-skip").await;
            (slots.keys().filter(|s| **s >= restarted).count() >= 3).then_some(())
        },
    )
    .await;
    let in_downtime = |slots: &BTreeMap<DateTime<Utc>, i64>| {
        slots
            .keys()
            .filter(|s| **s > stopped_at && **s < restarted)
            .count()
    };
    let once = slots_of(&db, "tick-once").await;
    let skip = slots_of(&db, "tick-skip").await;
    assert_eq!(
        in_downtime(&once),
        1,
        "run_once: one catch-up job: {once:?}"
    );
    assert_eq!(in_downtime(&skip), 0, "skip: none: {skip:?}");
    let last = *skip.keys().last().unwrap();
    assert_every_second(&once, restarted, last);
    assert_every_second(&skip, restarted, last);
    let mut misfires = 0.0;
    for p in &procs {
        misfires += p
            .metric("faultline_schedule_misfires_total")
            .await
            .unwrap_or(0.0);
    }
    assert!(
        misfires >= 6.0,
        "about 5 missed slots per schedule, less the catch-up: {misfires}"
    );
    for p in procs {
        p.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_that_both_fire_every_slot_make_one_job_per_slot() {
    let db = TestDb::new().await;
    let file = schedules_file();
    // No leader at all (--no-maintenance), and both processes fire anyway: the database alone
    // keeps each slot to one job.
    let procs: Vec<Proc> = (0..2)
        .map(|i| {
            Proc::worker(
                &db.url,
                &format!("firer-{i}"),
                &[
                    "--queues",
                    "cron",
                    "--no-maintenance",
                    "--drill-schedule-always",
                    "--schedules",
                    file.0.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let first_up = wait_for("a scheduler to tick", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, DateTime<Utc>>("select up_since from faultline.scheduler_clock")
            .fetch_optional(&db.pool)
            .await
            .unwrap()
    })
    .await;
    let last = wait_for("6 s of slots", Duration::from_secs(60), || async {
        slots_of(&db, "tick-once")
            .await
            .keys()
            .last()
            .copied()
            .filter(|last| *last - first_up >= chrono::Duration::seconds(6))
    })
    .await;
    for p in &procs {
        let fired = p.metric("faultline_schedule_enqueued_total").await;
        assert!(fired.is_some(), "{} is not firing", p.name);
    }
    for p in procs {
        p.terminate().await;
    }
    for name in ["tick-once", "tick-skip"] {
        assert_every_second(&slots_of(&db, name).await, first_up, last);
    }
}

/// A pass that took longer than the up gap (1,500 schedules on a loaded machine) is not
/// downtime for the scheduler that ran it: the next pass of the same tenure fires every slot
/// that came due meanwhile. Another tenure after the same gap is judged by the gap.
#[tokio::test]
async fn a_slow_pass_is_not_downtime_for_its_own_tenure() {
    let db = TestDb::new().await;
    let store = db.store();
    store
        .put_schedule("canary", &every_second(Misfire::Skip))
        .await
        .unwrap();
    let tenure = uuid::Uuid::new_v4();
    store.fire_schedules_in(tenure).await.unwrap();
    // The last pass ticked 10 s ago (it took that long), after 20 s of up-time, and the
    // canary was considered up to 5 s ago.
    let rewind = |ticked: i64, up: i64, considered: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(
                "update faultline.scheduler_clock
                 set ticked_at = now() - $1 * interval '1 second',
                     up_since = now() - $2 * interval '1 second'",
            )
            .bind(ticked)
            .bind(up)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "update faultline.schedules
                 set considered_until = now() - $1 * interval '1 second',
                     next_run_at = now() - $1 * interval '1 second'",
            )
            .bind(considered)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    rewind(10, 20, 5).await;
    let outcome = store.fire_schedules_in(tenure).await.unwrap();
    assert!(outcome.misfires.is_empty(), "{outcome:?}");
    assert!(slots_of(&db, "canary").await.len() >= 4, "{outcome:?}");
    // Another tenure after a 10 s gap: downtime, and `skip` fires none of its slots.
    sqlx::query("delete from faultline.jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    rewind(10, 20, 5).await;
    let outcome = store.fire_schedules_in(uuid::Uuid::new_v4()).await.unwrap();
    let missed: BTreeMap<String, u64> = outcome.misfires.into_iter().collect();
    assert!(missed["canary"] >= 4, "{missed:?}");
}

/// A job type whose options send it to `mail`, at priority 3 with 7 attempts.
#[derive(serde::Serialize, serde::Deserialize)]
struct Digest {
    team: String,
}

impl faultline::JobArgs for Digest {
    const KIND: &'static str = "digest.send";
    fn options() -> faultline::JobOptions {
        faultline::JobOptions {
            queue: Some("mail".into()),
            priority: Some(3),
            max_attempts: Some(7),
            ..faultline::JobOptions::default()
        }
    }
}

#[tokio::test]
async fn a_typed_schedule_enqueues_in_its_types_queue_with_its_options() {
    let db = TestDb::new().await;
    let store = db.store();
    let spec = ScheduleSpec::for_job(
        "*/1 * * * * *",
        &Digest {
            team: "core".into(),
        },
    )
    .unwrap()
    .timezone("Europe/Paris")
    .misfire(Misfire::Skip);
    let (stored, created) = store.put_schedule("digest", &spec).await.unwrap();
    assert!(created);
    assert_eq!(
        (stored.queue.as_str(), stored.timezone.as_str()),
        ("mail", "Europe/Paris")
    );
    let job = wait_for(
        "the typed schedule's first job",
        Duration::from_secs(10),
        || async {
            store.fire_schedules().await.unwrap();
            let id: Option<faultline::JobId> = sqlx::query_scalar(
                "select id from faultline.all_jobs where idempotency_key like 'schedule:digest:%'",
            )
            .fetch_optional(&db.pool)
            .await
            .unwrap();
            Some(store.get(id?).await.unwrap())
        },
    )
    .await;
    assert_eq!(job.kind, "digest.send");
    assert_eq!(job.queue, "mail");
    assert_eq!((job.priority, job.max_attempts), (3, 7));
    assert_eq!(job.payload, json!({"team": "core"}));
}
