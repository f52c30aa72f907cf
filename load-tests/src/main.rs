//! Entry point of `momentum-load`: parses the command line and hands over to
//! [`momentum_load::cli::run`]. Exits 1 when a run cannot start or its report cannot be written,
//! 3 when `overload --check` completed with a failed check (2 is clap's usage error); other
//! errors measured during a run are in the report, not in the exit status.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = momentum_load::cli::Cli::parse();
    // Recorded in every report (`command`), so that the run can be repeated.
    cli.argv = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    match momentum_load::cli::run(cli).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error @ momentum_load::LoadError::ChecksFailed { .. }) => {
            eprintln!("momentum-load: {error}");
            ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("momentum-load: {error}");
            ExitCode::FAILURE
        }
    }
}
