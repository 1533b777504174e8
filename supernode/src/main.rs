//! `shoal-supernode`: parse the configuration, set up logging, serve until SIGTERM or Ctrl-C.
//! Exit codes follow `shoal_runtime::exit`: 78 for a configuration that does not load or
//! validate, 75 when serving fails in a way worth retrying, 1 otherwise.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use shoal_runtime::{logging, shutdown, Exit};
use shoal_supernode::{Supernode, SupernodeConfig};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    logging::accept_old_variable("SHOAL_LOG_LEVEL");
    let cli = Cli::parse();
    let config = match cli.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-supernode: {e}");
            return Exit::Config.into();
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                Exit::Ok.into()
            }
            Err(e) => {
                eprintln!("shoal-supernode: {e}");
                Exit::Config.into()
            }
        },
        None => run(config).into(),
    }
}

fn run(config: SupernodeConfig) -> Exit {
    logging::init(&config.log_level, config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return Exit::Failure;
        }
    };
    runtime.block_on(async move {
        let listen = config.listen;
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%listen, "cannot listen: {e}");
                return Exit::Failure;
            }
        };
        let supernode = match Supernode::new(config, &prometheus::Registry::new()) {
            Ok(sn) => sn,
            Err(e) => {
                tracing::error!("{e}");
                return Exit::Config;
            }
        };
        match supernode.serve(listener, shutdown::on_signal()).await {
            Ok(()) => Exit::Ok,
            Err(e) => {
                tracing::error!("{e}");
                if e.is_retryable() {
                    Exit::TempFail
                } else {
                    Exit::Failure
                }
            }
        }
    })
}
