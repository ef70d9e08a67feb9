//! The `bento` binary: logging set-up, argument parsing, and the exit code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = bento::cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", bento::cli::describe_error(&err));
            ExitCode::FAILURE
        }
    }
}
