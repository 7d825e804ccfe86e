//! The `faultline` binary: one process per subcommand, all built on the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate(args) => cli::migrate(args).await,
        Command::Serve(_)
        | Command::Worker(_)
        | Command::Up(_)
        | Command::Jobs(_)
        | Command::Drill(_)
        | Command::Bench(_) => {
            let name = cli.command.name();
            eprintln!(
                "faultline {name}: not yet available in this build (the foundation ships \
                 `faultline migrate` and the library; see README.md)"
            );
            Ok(ExitCode::from(2))
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FAULTLINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
