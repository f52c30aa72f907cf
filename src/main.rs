//! The `momentum` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

use momentum::cli::{Cli, Command, EvalCommand, ServeArgs};
use momentum::{eval, telemetry, Settings};

/// mimalloc instead of glibc's allocator: ingestion allocates and frees many small strings
/// across threads (the request decoder, the shards, the log writer), where glibc spent a
/// quarter of the CPU in malloc/free under load (perf, PostgreSQL async ingest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
        }
        Some(Command::Eval(EvalCommand::Classify(args))) => eval::classify::run(&args)
            .map(|report| println!("{report}"))
            .map_err(|e| e.to_string()),
        Some(Command::Train(args)) => {
            momentum::analytics::offline::run(&args, cli.serve.config.as_deref())
                .map(|report| println!("{report}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("momentum: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let mut settings = Settings::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(bind) = args.bind {
        settings.server.bind = bind;
    }
    telemetry::init(&settings.logging);
    actix_web::rt::System::new().block_on(async move {
        let server = momentum::start(settings).await.map_err(|e| e.to_string())?;
        server.run().await.map_err(|e| e.to_string())
    })
}
