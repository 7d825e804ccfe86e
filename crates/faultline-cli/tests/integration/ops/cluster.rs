//! The private cluster: runs as an unprivileged user when we are root, keeps committed jobs
//! across stop and start (fast and immediate), and cleans up after itself.

use std::time::Duration;

use faultline::{db, JobState, NewJob, Store};
use faultline_pg::{Cluster, StopMode};
use serde_json::json;

use crate::harness::{create_database, pool};

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn private_cluster_runs_unprivileged_and_keeps_committed_jobs_across_restarts() {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .expect("start a private cluster");
    let pid = cluster.server_pid().unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let user = cluster.server_user().expect("a server user when root");
        let expected = nix::unistd::User::from_name(user).unwrap().unwrap().uid;
        assert_ne!(uid_of(pid), 0, "postgres must not run as root");
        assert_eq!(uid_of(pid), expected.as_raw());
    }
    assert!(cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port().unwrap()))
        .exists());

    create_database(&cluster.url("postgres"), "app").await;
    let url = cluster.url("app");
    let pool = pool(&url, 2).await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone());
    let first = store
        .enqueue(NewJob::new("k", json!({"n": 1})))
        .await
        .unwrap()
        .into_job();
    pool.close().await;

    let port = cluster.port();
    for mode in [StopMode::Fast, StopMode::Immediate] {
        cluster.stop(mode).unwrap();
        assert!(!cluster.is_running());
        cluster.start().unwrap();
        assert_eq!(cluster.port(), port, "a restart keeps the port");
        let pool = pool_retrying(&url).await;
        let store = Store::new(pool.clone());
        let job = store.get(first.id).await.unwrap();
        assert_eq!(job.state, JobState::Queued, "after {mode:?} stop");
        // Commit another job right before the next (harder) stop.
        store
            .enqueue(NewJob::new("k", json!({"after": format!("{mode:?}")})))
            .await
            .unwrap();
        pool.close().await;
    }
    let pool = pool_retrying(&url).await;
    let count: i64 = sqlx::query_scalar("select count(*) from faultline.all_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 3, "every committed job survived");
    pool.close().await;
}

#[tokio::test]
async fn dropping_a_temporary_cluster_stops_it_and_removes_its_directory() {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let pid = cluster.server_pid().unwrap();
    let root = cluster.root().to_path_buf();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    assert!(!root.exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie until reaped is fine; it must not be running.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z ")
        }
    );
}

#[test]
fn missing_binaries_error_names_the_package_to_install() {
    let message = faultline_pg::PgError::BinariesNotFound.to_string();
    assert!(
        message.contains("apt-get install -y postgresql"),
        "{message}"
    );
    assert!(message.contains("/usr/lib/postgresql"), "{message}");
}

async fn pool_retrying(url: &str) -> sqlx::PgPool {
    crate::harness::wait_for(
        "the restarted server to accept connections",
        Duration::from_secs(30),
        || async {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .ok()
        },
    )
    .await
}

/// A cluster made by an earlier release trusted every local connection; reopening it sets a
/// password before it serves again, and a connection without it is refused.
#[tokio::test]
async fn a_cluster_that_trusted_everyone_gets_a_password_before_it_serves_again() {
    use faultline_pg::ClusterOptions;
    use sqlx::Connection;
    let first = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let root = first.root().to_path_buf();
    let data = root.join("data");
    tokio::task::spawn_blocking({
        let first = first;
        move || {
            first.stop(StopMode::Fast).unwrap();
            // Forget the handle without removing the directory: it is the "old" cluster.
            std::mem::forget(first);
        }
    })
    .await
    .unwrap();
    // As the earlier release left it: trust, and no password file.
    std::fs::remove_file(data.join("faultline.password")).unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let reopened = tokio::task::spawn_blocking({
        let root = root.clone();
        move || {
            let cluster = Cluster::create(
                &root,
                ClusterOptions {
                    remove_on_drop: true,
                    ..ClusterOptions::ephemeral()
                },
            )?;
            cluster.start()?;
            Ok::<_, faultline_pg::PgError>(cluster)
        }
    })
    .await
    .unwrap()
    .unwrap();
    let port = reopened.port().unwrap();
    let error =
        sqlx::PgConnection::connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
            .await
            .unwrap_err();
    assert!(error.to_string().contains("password"), "{error}");
    let conn = sqlx::PgConnection::connect(&reopened.url("postgres"))
        .await
        .expect("the URL carries the new password");
    let _ = conn.close().await;
    let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
}
