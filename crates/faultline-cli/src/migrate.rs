//! `faultline migrate`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use faultline::db;

use crate::args::DatabaseArgs;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let pool = args.database.pool()?;
    db::migrate(&pool)
        .await
        .context("could not apply the schema")?;
    let current = db::schema_is_current(&pool).await?;
    pool.close().await;
    anyhow::ensure!(current, "migrations ran but the schema is not current");
    tracing::info!("schema is current");
    Ok(ExitCode::SUCCESS)
}
