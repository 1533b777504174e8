//! `shoal-lazyfs`: convert images to lazyfs, inspect, check, unpack and mount them. Parses
//! arguments, hands the command to [`cli`] and maps errors to the exit codes of
//! `shoal_runtime::exit`: 0 success, 1 failure, 2 usage, 3 `check` found problems, 75 a
//! retryable (network) failure, 78 settings that do not load or validate.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use shoal_runtime::{logging, Exit, LogFormat};

fn main() -> ExitCode {
    // fuser warns about every request kind a read-only filesystem leaves out.
    logging::init(
        &logging::filter_from_env("warn,fuser=error"),
        LogFormat::Text,
    );
    let cli = cli::Cli::parse();
    match cli::run(cli.command) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("shoal-lazyfs: {e:#}");
            Exit::for_error_retrying(e.as_ref(), shoal_lazyfs::Error::is_retryable).into()
        }
    }
}
