//! `faultline up`: everything in one process for a newcomer. With no `DATABASE_URL`, a private
//! Postgres cluster under `./.faultline/` (kept across runs), migrated; the API; workers. Ctrl-C
//! shuts it all down gracefully: the API and the workers first, then the cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use faultline::metrics::Metrics;
use faultline::worker::{builtin_registry, Worker};
use faultline::{db, Store};
use faultline_pg::{Cluster, ClusterOptions, StopMode, Supervisor, SupervisorConfig};
use sqlx::{Connection, PgConnection};

use crate::args::MaintainerOptions;
use crate::serve::ApiOptions;
use crate::signals;
use crate::worker::WorkerOptions;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Use this Postgres instead of a private cluster.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Where the private cluster keeps its data (reused across runs).
    #[arg(long, env = "FAULTLINE_DATA_DIR", default_value = ".faultline")]
    pub data_dir: PathBuf,

    /// Most database connections this process holds.
    #[arg(
        long = "db-pool-size",
        env = "FAULTLINE_DB_POOL_SIZE",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub pool_size: u32,

    #[command(flatten)]
    pub api: ApiOptions,

    #[command(flatten)]
    pub worker: WorkerOptions,

    #[command(flatten)]
    pub maintainer: MaintainerOptions,
}

/// The database name `up` uses in its private cluster.
const DATABASE: &str = "faultline";

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let shutdown = signals::shutdown_token()?;
    let schedules = args.maintainer.schedule_file()?;
    // Bind first: a taken port should fail before a cluster is started.
    let listener = args.api.bind().await?;
    let (url, cluster) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let dir = args.data_dir.join("pg");
            tracing::info!("starting a private Postgres in {}", dir.display());
            let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<Cluster> {
                let cluster = Cluster::create(&dir, ClusterOptions::default())?;
                cluster.start()?;
                Ok(cluster)
            })
            .await??;
            create_database(&cluster.url("postgres"), DATABASE).await?;
            (cluster.url(DATABASE), Some(Arc::new(cluster)))
        }
    };
    // Supervised: if the private Postgres dies, it is started again while the API and the
    // workers ride the outage out.
    let supervisor = cluster.clone().map(|cluster| {
        let supervisor = Supervisor::new(cluster, SupervisorConfig::default());
        tokio::spawn(supervisor.run(shutdown.clone()))
    });
    let result = run_with(&args, schedules, &url, listener, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    if let Some(cluster) = cluster {
        tracing::info!("stopping the private Postgres");
        tokio::task::spawn_blocking(move || cluster.stop(StopMode::Fast)).await??;
    }
    result
}

async fn run_with(
    args: &UpArgs,
    schedules: Option<faultline::schedule::ScheduleFile>,
    url: &str,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let pool = db::connect(
        url,
        &db::PoolConfig {
            max_connections: args.pool_size,
            ..db::PoolConfig::default()
        },
    )?;
    db::migrate(&pool)
        .await
        .context("could not apply the schema")?;
    let pooled = db::pooled(url);
    let mut store_config = args.worker.store_config(pooled)?;
    store_config.max_payload_bytes = args.api.max_payload_bytes;
    let store = Store::with_config(pool.clone(), store_config);
    args.maintainer
        .declare_schedules(schedules, &store, &shutdown)?;
    let metrics = Arc::new(Metrics::new());
    let worker = Worker::new(
        store.clone(),
        builtin_registry(args.worker.webhook_config()).context("--webhook-proxy")?,
        // The worker stands for election (one candidate per process), so the registry shows
        // this process as the leader.
        args.worker.worker_config(pooled, args.maintainer.config()?),
    )
    .map_err(crate::args::flag_error)?
    .with_metrics(metrics.clone());

    let addr = listener.local_addr()?;
    let api = args
        .api
        .spawn(listener, store, metrics.clone(), None, shutdown.clone());
    let worker = tokio::spawn(worker.run(shutdown.clone()));
    print_banner(addr, url, args);

    shutdown.cancelled().await;
    let _ = worker.await;
    let _ = api.await;
    pool.close().await;
    println!("Faultline stopped.");
    Ok(ExitCode::SUCCESS)
}

fn print_banner(addr: std::net::SocketAddr, url: &str, args: &UpArgs) {
    let base = format!("http://{addr}");
    let database = match &args.database_url {
        Some(_) => "DATABASE_URL".to_owned(),
        None => {
            // The password stays in its 0600 file, not on the terminal or in scrollback.
            let masked = match url.split_once('@') {
                Some((head, tail)) => match head.rsplit_once(':') {
                    Some((user, _)) => format!("{user}:****@{tail}"),
                    None => url.to_owned(),
                },
                None => url.to_owned(),
            };
            format!(
                "{masked}  (data in {}; password in {})",
                args.data_dir.join("pg").display(),
                args.data_dir.join("pg/data/faultline.password").display()
            )
        }
    };
    println!(
        "\nFaultline is up.\n\
         \x20 API       {base}   (OpenAPI: {base}/openapi.json, metrics: {base}/metrics)\n\
         \x20 Postgres  {database}\n\
         \x20 Workers   {} slots on queues {}\n\n\
         Try:\n\
         \x20 curl -s -X POST {base}/v1/jobs -H 'content-type: application/json' -d '{{\"kind\":\"noop\"}}'\n\
         \x20 faultline jobs list --url {base}\n\n\
         Press Ctrl-C to stop.\n",
        args.worker.concurrency,
        args.worker.queues.join(","),
    );
}

async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .context("cannot connect to the private Postgres")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await?;
    }
    let _ = conn.close().await;
    Ok(())
}
