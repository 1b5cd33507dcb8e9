//! The `tunehook` binary: parse the command line, then hand over to the library.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tunehook::cli::run(tunehook::cli::Cli::parse()).await
}
