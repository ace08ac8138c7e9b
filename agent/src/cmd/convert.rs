//! `support-agent convert`: QCOW2 -> raw, sparse file or stdout.

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `support-agent convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The QCOW2 image to read.
    pub input: PathBuf,
    /// The raw file to write (sparse), or `-` for stdout (zeros written out).
    pub output: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file =
        File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let image = qcow2::Image::open(file)
        .with_context(|| format!("cannot read {} as a QCOW2 image", args.input.display()))?;
    if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        qcow2::convert::to_raw_stream(&image, BufWriter::with_capacity(1 << 20, stdout))
            .with_context(|| format!("cannot convert {}", args.input.display()))?;
    } else {
        // Replace a regular file by a new one rather than truncating it:
        // ext4 flushes a truncated-then-rewritten file on close.
        if std::fs::symlink_metadata(&args.output).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&args.output)
                .with_context(|| format!("cannot replace {}", args.output.display()))?;
        }
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&args.output)
            .with_context(|| format!("cannot create {}", args.output.display()))?;
        qcow2::convert::to_raw(&image, &out).with_context(|| {
            format!(
                "cannot convert {} to {}",
                args.input.display(),
                args.output.display()
            )
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
