//! `support-agent inspect`.

use std::process::ExitCode;

/// Arguments of `support-agent inspect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`inspect` is not available in this build yet")
}
