//! Entry point of `momentum-load`: parses the command line and hands over to
//! [`momentum_load::cli::run`]. Exits 1 when a run cannot start or its report cannot be written;
//! errors measured during a run are in the report, not in the exit status.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = momentum_load::cli::Cli::parse();
    match momentum_load::cli::run(cli).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("momentum-load: {error}");
            ExitCode::FAILURE
        }
    }
}
