//! Sending images to `support-server` (docs/upload-protocol.md): the HTTP
//! client with retries ([`client`]) and the streaming chunker and upload
//! workers ([`stream`]), plus the connection options shared by `collect` and
//! `upload`.

pub mod client;
pub mod stream;

use anyhow::Context;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to upload (flags, environment, config file).
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Support server URL (e.g. https://support.example.com).
    #[arg(long, env = "SUPPORT_SERVER")]
    pub server: Option<String>,
    /// Upload token given by your support contact.
    #[arg(long, env = "SUPPORT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Ticket (case) reference; defaults to the token's own ticket.
    #[arg(long, env = "SUPPORT_TICKET")]
    pub ticket: Option<String>,
    /// PEM certificate of a private CA to trust in addition to the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Config file (TOML with `server`, `token`, `ticket`, `ca_file`);
    /// default: $XDG_CONFIG_HOME/support-agent/config.toml when present.
    #[arg(long, value_name = "FILE", env = "SUPPORT_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the small resume state lives (default:
    /// $XDG_STATE_HOME/support-agent, else ~/.local/state/support-agent).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Parallel chunk uploads (default: what the server suggests, at most 8).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Chunk size in KiB (a multiple of 64; default 4096, capped by the
    /// server's limit). A resumed upload keeps the size it started with.
    #[arg(long, value_name = "KIB")]
    pub chunk_kib: Option<u64>,
    /// Keep retrying a failing network for this many seconds before giving
    /// up (a re-run resumes anyway).
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub retry_for: u64,
    /// No progress display; only the final result and errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
    ticket: Option<String>,
    ca_file: Option<PathBuf>,
}

/// Settings resolved from flags, environment and config file.
pub struct Resolved {
    /// Client settings.
    pub client: client::Config,
    /// Ticket, when given.
    pub ticket: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn xdg(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(fallback)))
}

impl ServerArgs {
    /// Applies the config file under flags and environment.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let path = self.config.clone().or_else(|| {
            xdg("XDG_CONFIG_HOME", ".config").map(|d| d.join("support-agent/config.toml"))
        });
        let file: FileConfig = match &path {
            Some(p) if self.config.is_some() || p.exists() => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the config file {}", p.display()))?;
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "the config file {} is not valid: {}",
                        p.display(),
                        e.message()
                    )
                })?
            }
            _ => FileConfig::default(),
        };
        let server = self.server.clone().or(file.server).ok_or_else(|| {
            anyhow::anyhow!("no server given; pass --server URL (or set SUPPORT_SERVER)")
        })?;
        let token = self.token.clone().or(file.token).ok_or_else(|| {
            anyhow::anyhow!("no upload token given; pass --token TOKEN (or set SUPPORT_TOKEN) as given by your support contact")
        })?;
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => xdg("XDG_STATE_HOME", ".local/state")
                .map(|d| d.join("support-agent"))
                .unwrap_or_else(|| PathBuf::from(".support-agent-state")),
        };
        Ok(Resolved {
            client: client::Config {
                server,
                token: token.trim().to_string(),
                ca_file: self.ca_file.clone().or(file.ca_file),
                retry: client::Retry {
                    retry_for: Duration::from_secs(self.retry_for),
                    ..client::Retry::default()
                },
            },
            ticket: self.ticket.clone().or(file.ticket),
            state_dir,
        })
    }

    /// Chunk size for the server's limits: a multiple of 64 KiB.
    pub fn chunk_size(&self, limits: &client::Limits) -> u64 {
        const UNIT: u64 = 64 << 10;
        let want = self.chunk_kib.unwrap_or(4096).max(64) << 10;
        let cap = (limits.max_chunk_size / UNIT).max(1) * UNIT;
        (want.min(cap) / UNIT).max(1) * UNIT
    }

    /// Worker count.
    pub fn workers(&self, limits: &client::Limits) -> usize {
        self.jobs
            .unwrap_or(limits.concurrency.clamp(1, 8) as usize)
            .clamp(1, 32)
    }
}

/// The image's URL for people.
pub fn image_url(base: &str, id: &str) -> String {
    format!("{base}/api/v1/images/{id}")
}
