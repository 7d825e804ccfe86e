//! docs/operations.md Leader: maintenance runs in one elected process at a time, through a lease row;
//! a dead leader is replaced within its TTL; a stalled one that resumes is fenced off.

use std::time::{Duration, Instant};

use faultline::maintenance::MAINTAINER_ROLE;
use nix::sys::signal::Signal;
use uuid::Uuid;

use crate::harness::procs::Proc;
use crate::harness::{wait_for, TestDb};

const TTL: Duration = Duration::from_secs(5);

/// Every process's `faultline_leader`, in order (`None` for one that did not answer).
async fn leader_gauges(procs: &[Proc]) -> Vec<Option<f64>> {
    let mut gauges = Vec::new();
    for p in procs {
        gauges.push(p.metric("faultline_leader").await);
    }
    gauges
}

fn leaders(gauges: &[Option<f64>]) -> Vec<usize> {
    gauges
        .iter()
        .enumerate()
        .filter(|(_, g)| **g == Some(1.0))
        .map(|(i, _)| i)
        .collect()
}

async fn holder(db: &TestDb) -> Option<String> {
    db.store()
        .leader(MAINTAINER_ROLE)
        .await
        .unwrap()
        .map(|l| l.holder)
}

fn start_five(db: &TestDb) -> Vec<Proc> {
    (0..5)
        .map(|i| {
            let name = format!("candidate-{i}");
            Proc::worker(&db.url, &name, &["--leader-ttl", "5s", "--lease-ttl", "5s"])
        })
        .collect()
}

/// Wait until exactly one of `procs` says it leads and the database agrees; its index.
async fn one_leader(db: &TestDb, procs: &[Proc], within: Duration) -> usize {
    wait_for("exactly one leader", within, || async {
        let gauges = leader_gauges(procs).await;
        let leaders = leaders(&gauges);
        let holder = holder(db).await?;
        match leaders.as_slice() {
            [one] if procs[*one].name == holder => Some(*one),
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_five_leads_and_a_killed_leader_is_replaced_within_its_ttl() {
    let db = TestDb::new().await;
    let mut procs = start_five(&db);
    let first = one_leader(&db, &procs, Duration::from_secs(30)).await;

    // Steady state: at every sample, one process leads, and it is the one the row names.
    for _ in 0..15 {
        let gauges = leader_gauges(&procs).await;
        assert_eq!(leaders(&gauges), vec![first], "gauges {gauges:?}");
        assert_eq!(
            holder(&db).await.as_deref(),
            Some(procs[first].name.as_str())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL the leader: the others take over once its term expires, within TTL + 1 s.
    let dead = procs.remove(first);
    let killed = Instant::now();
    dead.kill().await;
    let next = one_leader(&db, &procs, TTL + Duration::from_secs(10)).await;
    let takeover = killed.elapsed();
    eprintln!("leader takeover after SIGKILL: {takeover:?} (TTL {TTL:?})");
    assert!(
        takeover <= TTL + Duration::from_secs(1),
        "took {takeover:?} to replace a killed leader (TTL {TTL:?})"
    );
    assert!(procs[next].log().contains("elected maintainer"));
    for _ in 0..5 {
        let gauges = leader_gauges(&procs).await;
        assert_eq!(leaders(&gauges), vec![next], "gauges {gauges:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_that_resumes_is_fenced_off() {
    let db = TestDb::new().await;
    let procs = start_five(&db);
    let first = one_leader(&db, &procs, Duration::from_secs(30)).await;
    let old_token = db
        .store()
        .leader(MAINTAINER_ROLE)
        .await
        .unwrap()
        .unwrap()
        .token;

    procs[first].signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let others: Vec<&Proc> = procs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, p)| p)
        .collect();
    let new_leader = wait_for(
        "another process to lead",
        TTL + Duration::from_secs(10),
        || async {
            for p in &others {
                if p.metric("faultline_leader").await == Some(1.0) {
                    return Some(p.name.clone());
                }
            }
            None
        },
    )
    .await;
    assert!(stopped.elapsed() <= TTL + Duration::from_secs(1));
    let term = db.store().leader(MAINTAINER_ROLE).await.unwrap().unwrap();
    assert_eq!(term.holder, new_leader);
    assert!(term.token > old_token, "a takeover is a new, larger token");

    // Resumed, the old leader reads 0 at once (its term's local deadline is long past) and
    // cannot renew the term it lost; one process leads throughout.
    procs[first].signal(Signal::SIGCONT);
    assert_eq!(procs[first].metric("faultline_leader").await, Some(0.0));
    for _ in 0..10 {
        let gauges = leader_gauges(&procs).await;
        assert_eq!(leaders(&gauges).len(), 1, "gauges {gauges:?}");
        assert_eq!(gauges[first], Some(0.0), "gauges {gauges:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(holder(&db).await, Some(new_leader));
    let log = procs[first].log();
    assert!(
        log.contains("maintainer term lapsed") || log.contains("maintainer term lost"),
        "{log}"
    );
}

#[tokio::test]
async fn election_gives_one_term_at_a_time_and_never_revives_a_lapsed_one() {
    let db = TestDb::new().await;
    let store = db.store();
    let long = Duration::from_secs(60);

    // Ten candidates at once: one term.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .elect(MAINTAINER_ROLE, &format!("c{i}"), Uuid::now_v7(), long)
                .await
                .unwrap()
        });
    }
    let mut terms = Vec::new();
    while let Some(term) = tasks.join_next().await {
        terms.extend(term.unwrap());
    }
    assert_eq!(terms.len(), 1, "{terms:?}");
    let term = terms.pop().unwrap();
    assert!(store
        .elect(MAINTAINER_ROLE, "late", Uuid::now_v7(), long)
        .await
        .unwrap()
        .is_none());
    let renewed = store.renew(&term, long).await.unwrap().expect("current");
    assert!(renewed.expires_at >= term.expires_at);
    // Its resignation ends it at once; a stale copy of it cannot end the next term.
    store.resign(&term).await.unwrap();
    assert!(store.leader(MAINTAINER_ROLE).await.unwrap().is_none());
    let next = store
        .elect(MAINTAINER_ROLE, "next", Uuid::now_v7(), long)
        .await
        .unwrap()
        .expect("elected after a resignation");
    assert!(next.token > term.token);
    store.resign(&term).await.unwrap();
    assert!(store.renew(&term, long).await.unwrap().is_none());
    assert_eq!(
        store
            .leader(MAINTAINER_ROLE)
            .await
            .unwrap()
            .map(|l| l.token),
        Some(next.token)
    );

    // Lapsed (a role of its own, with a short term): not renewable even though nobody took it;
    // its holder must win a new term, with a new token.
    let role = "lapse-test";
    let short = store
        .elect(role, "s", Uuid::now_v7(), Duration::from_millis(300))
        .await
        .unwrap()
        .expect("elected");
    wait_for("the term to lapse", Duration::from_secs(10), || async {
        store.leader(role).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(store.renew(&short, long).await.unwrap().is_none());
    let again = store
        .elect(role, "s", short.instance, long)
        .await
        .unwrap()
        .expect("elected after the lapse");
    assert!(again.token > short.token);
    assert!(store.renew(&short, long).await.unwrap().is_none());
}
