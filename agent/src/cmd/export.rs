//! `support-agent export`.

use std::process::ExitCode;

/// Arguments of `support-agent export`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`export` is not available in this build yet")
}
