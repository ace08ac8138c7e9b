//! `support-agent collect`.

use std::process::ExitCode;

/// Arguments of `support-agent collect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`collect` is not available in this build yet")
}
