use std::process::ExitCode;

/// Rows are allocated on sqlx's SQLite worker threads and freed on tokio's: glibc's malloc
/// serialises that cross-thread traffic on arena locks (measured: ~25% of CPU in a list
/// benchmark), mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use users_api::{
    cli,
    config::{Cli, Command},
    runtime, startup, telemetry,
};

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    // First, before anything opens a database: so it always takes.
    let sqlite_on_mimalloc = users_api::store::sqlite_memory::use_mimalloc();
    debug_assert!(
        sqlite_on_mimalloc,
        "SQLite was used before main configured it"
    );
    let args = Cli::parse();
    let runtime = runtime::build(args.serve_args()).expect("the async runtime starts");
    // Before any task runs, so before any SQLite connection thread starts.
    if runtime::pinned() {
        let hooked = users_api::store::sqlite_threads::release_pins_on_open();
        debug_assert!(hooked, "SQLite takes the auto-extension");
    }
    runtime.block_on(run(args))
}

/// mimalloc reserves its heap in large aligned arenas. On a kernel whose transparent huge pages
/// are set to `always` (as on the benchmark machine), the first touch anywhere in a 2 MiB range
/// of them makes all 2 MiB resident: an idle server held 65 MiB, 42 MiB with huge pages off for
/// the process (measured). Done first, before the runtime's threads allocate.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE sets a flag on this process; no memory is passed. Failure
    // (an old kernel) leaves the default, which is only a matter of memory use.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

async fn run(args: Cli) -> ExitCode {
    let mut log_guard = None;
    let outcome: Result<(), Box<dyn std::error::Error>> = async {
        if let Some(Command::Openapi { yaml }) = args.command {
            return Ok(cli::print_spec(&mut std::io::stdout().lock(), yaml)?);
        }
        let db = &args.db;
        log_guard = Some(telemetry::init(db.log_format));
        match args.command {
            None | Some(Command::Serve(_)) => startup::serve(db, args.serve_args()).await,
            Some(Command::Migrate) => {
                let (conn, ()) = startup::open_database(db, async |_| Ok(())).await?;
                conn.close().await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::Keys { command }) => {
                let (conn, ()) = startup::open_database(db, async |_| Ok(())).await?;
                let printed = cli::keys(&conn, command, &mut std::io::stdout().lock()).await;
                conn.close().await?;
                printed?;
                Ok(())
            }
            Some(Command::Openapi { .. }) => unreachable!("handled above"),
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
