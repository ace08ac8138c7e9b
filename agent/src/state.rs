//! The small resume state of `collect` and `upload`: which upload on which
//! server a run belongs to, and the scramble key that makes a re-run produce
//! the same bytes. One JSON file per (server, ticket, source, options),
//! written atomically, mode 0600; never any image data.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What is kept between runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Upload id on the server.
    pub upload_id: String,
    /// Server base URL.
    pub server: String,
    /// Ticket as given (None: the token's own).
    pub ticket: Option<String>,
    /// Scramble key, hex (collect only). Private: the file is mode 0600.
    pub key: Option<String>,
    /// What the source was, so a changed source starts a new upload.
    pub source: String,
    /// Chunk window size the upload was started with.
    pub chunk_size: u64,
}

/// Where the state of one job lives.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file for the job described by `job` (a stable string of
    /// server, ticket, source and options) in `dir`.
    pub fn new(dir: &Path, kind: &str, job: &str) -> StateFile {
        let h = hex::encode(&Sha256::digest(job.as_bytes())[..12]);
        StateFile {
            path: dir.join(format!("{kind}-{h}.json")),
        }
    }

    /// The saved state, if any (an unreadable one counts as none).
    pub fn load(&self) -> Option<State> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Saves atomically (temporary file, fsync, rename), mode 0600.
    pub fn save(&self, st: &State) -> anyhow::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let what = || {
            format!(
                "cannot write the resume state in {}; give a writable --state-dir",
                dir.display()
            )
        };
        create_private_dir(dir).with_context(what)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).with_context(what)?;
            f.write_all(serde_json::to_string_pretty(st)?.as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(what)?;
        }
        std::fs::rename(&tmp, &self.path).with_context(what)?;
        Ok(())
    }

    /// Forgets the job (after completion).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}
