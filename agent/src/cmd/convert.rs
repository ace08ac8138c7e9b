//! `support-agent convert`.

use std::process::ExitCode;

/// Arguments of `support-agent convert`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`convert` is not available in this build yet")
}
