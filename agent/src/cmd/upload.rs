//! `support-agent upload`.

use std::process::ExitCode;

/// Arguments of `support-agent upload`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`upload` is not available in this build yet")
}
