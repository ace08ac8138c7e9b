//! `support-agent`: the customer-side tool. Thin CLI over the `qcow2` and
//! `extfs` libraries; each subcommand lives in its own module under `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;
mod pipeline;
mod progress;
mod state;
mod upload;

/// Collect ext2/3/4 filesystem metadata for a support case.
#[derive(Parser)]
#[command(name = "support-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a QCOW2 image to a raw file (sparse) or to stdout (`-`).
    Convert(cmd::convert::Args),
    /// Check the structure of a QCOW2 image (exit 0 clean, non-zero on problems).
    Check(cmd::check::Args),
    /// Print a dumpe2fs-like summary, group table and findings of a filesystem.
    Inspect(cmd::inspect::Args),
    /// Export the filesystem's metadata, scrambled and compressed, as QCOW2.
    Export(cmd::export::Args),
    /// Run `e2fsck -fn` on a QCOW2 image through a temporary sparse raw copy.
    Fsck(cmd::fsck::Args),
    /// Export and upload to a support server in one go, resumably.
    Collect(cmd::collect::Args),
    /// Upload an existing QCOW2 image to a support server, resumably.
    Upload(cmd::upload::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(a) => cmd::convert::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Fsck(a) => cmd::fsck::run(a),
        Command::Collect(a) => cmd::collect::run(a),
        Command::Upload(a) => cmd::upload::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One sentence for people: the outermost context says what failed,
            // the innermost cause why.
            let mut msg = format!("{err}");
            if let Some(cause) = err.chain().skip(1).last() {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("support-agent: {msg}");
            ExitCode::from(2)
        }
    }
}
