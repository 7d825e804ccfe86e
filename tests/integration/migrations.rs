//! `faultline migrate` is idempotent and safe to run from several processes at once.

use std::process::Stdio;

use faultline::db;

use crate::harness::TestDb;

#[tokio::test]
async fn migrations_run_twice_without_error() {
    let db = TestDb::empty().await;
    assert!(!db::schema_is_current(&db.pool).await.unwrap());
    db::migrate(&db.pool).await.unwrap();
    db::migrate(&db.pool).await.unwrap();
    assert!(db::schema_is_current(&db.pool).await.unwrap());
    // sqlx's bookkeeping lives in our schema, not in public.
    let in_public: bool =
        sqlx::query_scalar("select exists (select 1 from pg_tables where schemaname = 'public')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!in_public);
}

#[tokio::test]
async fn migrations_from_four_processes_at_once_all_succeed() {
    let db = TestDb::empty().await;
    let mut children = Vec::new();
    for _ in 0..4 {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
                .arg("migrate")
                .env("DATABASE_URL", &db.url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for child in children {
        let output = child.wait_with_output().await.unwrap();
        assert!(
            output.status.success(),
            "faultline migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(db::schema_is_current(&db.pool).await.unwrap());
    let applied: i64 = sqlx::query_scalar("select count(*) from faultline._sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
}

#[tokio::test]
async fn migrate_names_the_problem_when_the_database_is_unreachable() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("could not apply the schema"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .arg("migrate")
        .env("DATABASE_URL", "not a url")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid database URL"), "{stderr}");
}
