//! `docs/schema.sql` is the schema the migrations make, as `pg_dump` prints it: one file a
//! reader can take in at once, where the migrations redefine some objects several times (the
//! `all_jobs` view, `claim_limited`). A migration that changes the schema changes this file in
//! the same commit: `make schema` rewrites it.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::TestDb;

fn snapshot_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/schema.sql"
    ))
}

/// The dump without what varies between runs and servers: comments (the server's version among
/// them), session settings, blank-line runs.
fn normalized(dump: &str) -> String {
    let mut out = String::new();
    let mut blank = true;
    for line in dump.lines() {
        let line = line.trim_end();
        if line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict")
        {
            continue;
        }
        if line.is_empty() {
            if !blank {
                out.push('\n');
            }
            blank = true;
            continue;
        }
        blank = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn docs_schema_sql_is_the_schema_the_migrations_make() {
    let db = TestDb::new().await;
    let binaries = faultline_pg::PgBinaries::find()
        .expect("the Postgres binaries (pg_dump among them): run scripts/ensure-postgres");
    let pg_dump = binaries.tool("pg_dump").unwrap_or_else(|| {
        panic!(
            "no pg_dump in {}: install the Postgres client (scripts/ensure-postgres)",
            binaries.dir.display()
        )
    });
    let output = Command::new(pg_dump)
        .args([
            "--schema-only",
            "--schema=faultline",
            "--no-owner",
            "--no-privileges",
        ])
        .arg(&db.url)
        .output()
        .expect("run pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dumped = normalized(&String::from_utf8_lossy(&output.stdout));
    let path = snapshot_path();
    if std::env::var_os("FAULTLINE_WRITE_SCHEMA").is_some() {
        let header = "-- The schema `faultline` as the migrations leave it (pg_dump --schema-only),\n\
                      -- checked against a migrated database by the test suite\n\
                      -- (ops::schema::docs_schema_sql_is_the_schema_the_migrations_make). Do not edit:\n\
                      -- add a migration, then run `make schema`.\n\n";
        std::fs::write(&path, format!("{header}{dumped}")).expect("write docs/schema.sql");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        normalized(&committed) == dumped,
        "docs/schema.sql is not the schema the migrations make: run `make schema` and commit it"
    );
}
