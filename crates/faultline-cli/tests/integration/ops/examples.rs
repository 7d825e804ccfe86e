//! The examples in `examples/` run against a real database and do what they say (cargo builds
//! them beside the tests).

use std::path::PathBuf;
use std::process::Command;

use faultline::JobState;

use crate::harness::TestDb;

/// `target/<profile>/examples/<name>`, beside this test binary's `deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples").join(name)
}

fn run(name: &str, db: &TestDb) -> String {
    let path = example(name);
    let out = Command::new(&path)
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_fan_in_example_leaves_the_report_waiting_on_its_three_fetches() {
    let db = TestDb::new().await;
    run("fan_in", &db);
    let report: (JobState, i32, i64) = sqlx::query_as(
        "select state, pending_dependencies, cardinality(depends_on)::int8
         from faultline.jobs where kind = 'sales.report'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(report, (JobState::Waiting, 3, 3));
}

#[tokio::test]
async fn the_exactly_once_example_credits_the_account_once_and_completes_the_job() {
    let db = TestDb::new().await;
    run("exactly_once", &db);
    let cents: i64 = sqlx::query_scalar("select cents from accounts where id = 'acct-1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cents, 500);
    let state: JobState =
        sqlx::query_scalar("select state from faultline.all_jobs where kind = 'account.credit'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(state, JobState::Succeeded);
}
