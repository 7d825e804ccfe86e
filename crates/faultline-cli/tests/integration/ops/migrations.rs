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

#[tokio::test]
async fn migrate_by_a_role_without_create_succeeds_when_the_schema_is_current() {
    let db = TestDb::new().await;
    let role = format!("app_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "create role {role} login password 'pw';
         revoke create on database {database} from public;
         grant connect on database {database} to {role};
         grant usage on schema faultline to {role};
         grant select on faultline._sqlx_migrations to {role};",
        database = db
            .url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap(),
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let url = crate::harness::with_role(&db.url, &role, "pw");
    let pool = db::connect(&url, &db::PoolConfig::default()).unwrap();
    db::migrate(&pool)
        .await
        .expect("a current schema needs no CREATE right");
    assert!(db::schema_is_current(&pool).await.unwrap());
    pool.close().await;
    sqlx::raw_sql(&format!("drop owned by {role}; drop role {role};"))
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn urls_that_are_not_postgres_are_refused_with_a_clear_message() {
    for url in [
        "http://127.0.0.1:5432/db",
        "mysql://root@127.0.0.1/db",
        "127.0.0.1:5432",
        "",
    ] {
        let error = db::connect(url, &db::PoolConfig::default()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("expected postgres://"), "{url}: {text}");
    }
    db::connect("postgresql://u@h/db", &db::PoolConfig::default()).unwrap();
}

#[tokio::test]
async fn a_failure_prints_its_cause_once() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args([
            "migrate",
            "--database-url",
            "postgres://u:p@127.0.0.1:1/none",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "the cause once: {stderr}"
    );
}
