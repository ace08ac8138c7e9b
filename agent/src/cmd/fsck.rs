//! `support-agent fsck`.

use std::process::ExitCode;

/// Arguments of `support-agent fsck`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`fsck` is not available in this build yet")
}
