//! `support-agent fsck`: the system's `e2fsck` on a QCOW2 image, through a
//! temporary sparse raw copy that is always removed (also on Ctrl-C).

use super::export::TempFile;
use anyhow::{bail, Context};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Arguments of `support-agent fsck`.
#[derive(clap::Args)]
pub struct Args {
    /// The QCOW2 image (e.g. from `support-agent export`).
    pub image: PathBuf,
    /// Options for e2fsck after `--` (default `-fn`: force a full check,
    /// change nothing).
    #[arg(last = true)]
    pub e2fsck_args: Vec<String>,
}

/// Where e2fsck is: `PATH`, then the sbin folders a user's `PATH` may lack.
fn find_e2fsck() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/sbin", "/usr/sbin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join("e2fsck"))
        .find(|p| p.is_file())
}

/// Runs the subcommand; the exit code is e2fsck's.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = args.image.display().to_string();
    let e2fsck = find_e2fsck().context(
        "e2fsck is not installed; install e2fsprogs (Debian: apt-get install e2fsprogs)",
    )?;
    let file = File::open(&args.image).with_context(|| format!("cannot open {name}"))?;
    let image =
        qcow2::Image::open(file).with_context(|| format!("cannot read {name} as a QCOW2 image"))?;
    let tmp_dir = std::env::temp_dir();
    let raw = TempFile::create_in(&tmp_dir, "support-agent-fsck.raw")
        .with_context(|| format!("cannot create a temporary file in {}", tmp_dir.display()))?;
    qcow2::convert::to_raw(&image, raw.file()).with_context(|| {
        format!(
            "cannot convert {name} to a temporary raw file in {} (is there room for its metadata?)",
            tmp_dir.display()
        )
    })?;
    let opts: Vec<String> = if args.e2fsck_args.is_empty() {
        vec!["-fn".into()]
    } else {
        args.e2fsck_args.clone()
    };
    let status = run_e2fsck(&e2fsck, &opts, raw.path())?;
    drop(raw);
    let code = status.code().unwrap_or(8);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(8)))
}

fn run_e2fsck(
    e2fsck: &Path,
    opts: &[String],
    raw: &Path,
) -> anyhow::Result<std::process::ExitStatus> {
    let status = Command::new(e2fsck)
        .args(opts)
        .arg(raw)
        .status()
        .with_context(|| format!("cannot run {}", e2fsck.display()))?;
    if status.code().is_none() {
        bail!("e2fsck was killed by a signal");
    }
    Ok(status)
}
