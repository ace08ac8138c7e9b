//! `support-agent check`.

use std::process::ExitCode;

/// Arguments of `support-agent check`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`check` is not available in this build yet")
}
