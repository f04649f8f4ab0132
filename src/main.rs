use std::process::ExitCode;

use clap::Parser;
use users_api::{
    cli,
    config::{Cli, Command},
    startup, telemetry,
};

fn main() -> ExitCode {
    let args = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.serve_args().worker_threads {
        runtime.worker_threads(workers.get());
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(err) => {
            eprintln!("users-api: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Cli) -> ExitCode {
    let Cli { command, serve } = args;
    let mut log_guard = None;
    let outcome: Result<(), Box<dyn std::error::Error>> = async {
        let (command, serve) = match command {
            Some(Command::Openapi { yaml }) => {
                return Ok(cli::print_spec(&mut std::io::stdout().lock(), yaml)?);
            }
            Some(Command::Serve(serve)) => (None, *serve),
            command => (command, serve),
        };
        // A server tells what it does; a command prints its result and only warnings besides.
        let default_filter = if command.is_none() { "info" } else { "warn" };
        log_guard = Some(telemetry::init(serve.log.format(), default_filter));
        // The database flags are global: given before or after a subcommand, they are here.
        let db = &serve.db;
        match command {
            None => startup::serve(&serve).await,
            Some(Command::Migrate) => {
                let (store, _) = startup::open_for_command(db).await?;
                store.close().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::Keys { command }) => {
                let (store, service) = startup::open_for_command(db).await?;
                let printed = cli::keys(&service, command, &mut std::io::stdout().lock()).await;
                store.close().await?;
                Ok(printed?)
            }
            Some(Command::Serve(_) | Command::Openapi { .. }) => unreachable!("handled above"),
        }
    }
    .await;
    // Queued log lines come out before the final error, in the order they happened.
    drop(log_guard);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err)
            if err
                .downcast_ref()
                .is_some_and(cli::CliError::is_closed_pipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("users-api: {err}");
            ExitCode::FAILURE
        }
    }
}
