//! The `momentum` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

use momentum::cli::{Cli, Command, EvalCommand, ServeArgs, StoreCommand};
use momentum::error::Report;
use momentum::{eval, telemetry, Settings};

/// Whatever ended a command; printed with its causes.
type Failure = Box<dyn std::error::Error>;

/// mimalloc instead of glibc's allocator: ingestion allocates and frees many small strings
/// across threads (the request decoder, the shards, the log writer), where glibc spent a
/// quarter of the CPU in malloc/free under load (perf, PostgreSQL async ingest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    allocator_options();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(ServeArgs {
            config: args.config.or(cli.serve.config),
            bind: args.bind.or(cli.serve.bind),
        }),
        Some(Command::Eval(EvalCommand::Recommend(args))) => {
            eval::recommend::run(&args, cli.serve.config.as_deref())
                .map(|report| println!("{report}"))
                .map_err(Failure::from)
        }
        Some(Command::Eval(EvalCommand::Classify(args))) => eval::classify::run(&args)
            .map(|report| println!("{report}"))
            .map_err(Failure::from),
        Some(Command::Store(command)) => store(command, cli.serve.config.as_deref()),
        Some(Command::Train(args)) => {
            momentum::analytics::offline::run(&args, cli.serve.config.as_deref())
                .map(|report| println!("{report}"))
                .map_err(Failure::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("momentum: {}", Report(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The allocator's options, which mimalloc reads before `main`: unless they are set in the
/// environment, the binary starts itself again (`exec`, the same process id) with
/// - `MIMALLOC_ALLOW_THP=0`: no transparent huge pages for the process (mimalloc then calls
///   `prctl(PR_SET_THP_DISABLE)`). With them, every 2 MiB page mimalloc touched, or touched
///   again after returning it, was zeroed whole: ingesting ml-100k spent a fifth of its CPU
///   zeroing pages and peaked 40 % higher in memory;
/// - `MIMALLOC_PURGE_DELAY=0`: freed pages go back to the system at once instead of after
///   10 ms, which under a stream of batches left a third of the resident memory of a million
///   one-event users in freed pages (341 MB against 467 MB), at no measured cost in throughput.
///
/// docs/operations.md, "Memory". If the start fails (the binary was replaced on disk), this
/// process goes on with mimalloc's defaults.
fn allocator_options() {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let unset: Vec<&str> = ["MIMALLOC_ALLOW_THP", "MIMALLOC_PURGE_DELAY"]
            .into_iter()
            .filter(|name| std::env::var_os(name).is_none())
            .collect();
        let mut args = std::env::args_os();
        if let (false, Ok(exe), Some(arg0)) =
            (unset.is_empty(), std::env::current_exe(), args.next())
        {
            // `exec` only returns on failure.
            let _ = std::process::Command::new(exe)
                .arg0(arg0)
                .args(args)
                .envs(unset.into_iter().map(|name| (name, "0")))
                .exec();
        }
    }
}

/// `momentum store check|recover`: prints the report; fails if the store is not intact
/// (`check`) or could not be rebuilt (`recover`).
fn store(command: StoreCommand, config: Option<&std::path::Path>) -> Result<(), Failure> {
    let settings = Settings::load(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match command {
            StoreCommand::Check => momentum::store::repair::check(&settings.store).await,
            StoreCommand::Recover => momentum::store::repair::recover(&settings.store).await,
        }
    })?;
    println!("{report}");
    if report.ok {
        Ok(())
    } else {
        Err("the store is not intact (see above)".into())
    }
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(bind) = args.bind {
        settings.server.bind = bind;
    }
    telemetry::init(&settings.logging);
    actix_web::rt::System::new().block_on(async move {
        let server = momentum::start(settings).await?;
        Ok(server.run().await?)
    })
}
