//! The `bento` binary: logging set-up, argument parsing, and the exit code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr is a closed pipe: `bento serve 2>&1 |
        // head`) is dropped; the default reports it with `eprintln!`, which panics there.
        .log_internal_errors(false)
        .init();
    let cli = bento::cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                bento::cli::describe_error(&err)
            );
            ExitCode::FAILURE
        }
    }
}
