//! Configuration: command-line flags, each also an environment variable, over
//! an optional TOML file, over built-in defaults (in that order of priority).

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `support-server`: stores, checks, converts and analyses uploaded ext
/// filesystem metadata images behind a REST API and a web dashboard.
#[derive(Debug, Parser)]
#[command(name = "support-server", version, about, long_about = None)]
pub struct Cli {
    /// Where state lives (shared by every subcommand).
    #[command(flatten)]
    pub common: CommonArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// TOML file with any of the `serve` options (snake_case keys, e.g.
    /// `listen = "0.0.0.0:8080"`); flags and environment override it.
    #[arg(long, env = "SUPPORT_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database and stored images; created if
    /// missing. [default: ./data]
    #[arg(long, env = "SUPPORT_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://user:pass@host/db` to keep state in PostgreSQL instead of
    /// the SQLite file in the data directory (images stay in the data
    /// directory).
    #[arg(long, env = "DATABASE_URL", global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Where image bytes live.
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Where image bytes live (see `docs/storage.md`). S3 credentials come from
/// the standard AWS environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or an instance role), never
/// from flags or the config file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageArgs {
    /// `local` (images in the data directory) or `s3` (an S3-compatible
    /// bucket: AWS S3, MinIO, Ceph RGW, Garage...). [default: local]
    #[arg(long, env = "SUPPORT_STORAGE", global = true, value_name = "BACKEND")]
    pub storage: Option<String>,
    /// Bucket of the s3 storage (it must exist).
    #[arg(long, env = "SUPPORT_S3_BUCKET", global = true, value_name = "NAME")]
    pub s3_bucket: Option<String>,
    /// Endpoint URL of an S3-compatible service, e.g.
    /// `http://minio.internal:9000`. [default: AWS]
    #[arg(long, env = "SUPPORT_S3_ENDPOINT", global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region. [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "SUPPORT_S3_REGION", global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Key prefix inside the bucket, e.g. `support/prod` (lets several
    /// deployments share a bucket). [default: none]
    #[arg(long, env = "SUPPORT_S3_PREFIX", global = true, value_name = "PREFIX")]
    pub s3_prefix: Option<String>,
    /// Allow a plain `http://` endpoint (a MinIO on a private network).
    /// [default: false]
    #[arg(
        long,
        env = "SUPPORT_S3_ALLOW_HTTP",
        global = true,
        value_name = "BOOL"
    )]
    pub s3_allow_http: Option<bool>,
    /// Memory for cached blocks of images read from the bucket (shared by
    /// all reads of the process), in bytes. [default: 67108864 (64 MiB)]
    #[arg(
        long,
        env = "SUPPORT_S3_CACHE_SIZE",
        global = true,
        value_name = "BYTES"
    )]
    pub s3_cache_size: Option<u64>,
}

/// Keys of the config file that belong to [`StorageArgs`].
const STORAGE_KEYS: [&str; 7] = [
    "storage",
    "s3_bucket",
    "s3_endpoint",
    "s3_region",
    "s3_prefix",
    "s3_allow_http",
    "s3_cache_size",
];

/// The resolved storage backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StorageConfig {
    /// The data directory.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3(crate::storage::S3Config),
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
    /// Run the HTTP service (API, uploads, ingest workers, dashboard); any
    /// number of replicas may share one PostgreSQL (see `--role`).
    Serve(ServeArgs),
    /// Create, list or revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Apply database migrations and exit (`serve` also applies them).
    Migrate,
    /// Operations on the configured database and storage: expired uploads,
    /// the retention policy. Takes the `serve` options (flags before the
    /// subcommand, environment or config file) for the same settings.
    Admin(AdminArgs),
}

/// `admin`: the `serve` options plus what to do.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Same options as `serve` (the storage and retention settings matter).
    #[command(flatten)]
    pub serve: ServeArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin operations.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Uploads in progress and expired ones.
    #[command(subcommand)]
    Uploads(UploadsCommand),
    /// The closed-ticket retention policy.
    #[command(subcommand)]
    Retention(RetentionCommand),
}

/// `admin uploads`.
#[derive(Debug, Subcommand)]
pub enum UploadsCommand {
    /// List uploads in progress (id, ticket, bytes received, expiry).
    List {
        /// Only uploads whose expiry passed (the ones `reap` removes).
        #[arg(long)]
        expired: bool,
    },
    /// Remove expired uploads: their rows and stored bytes.
    Reap {
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `admin retention`.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Delete the images of tickets closed longer ago than
    /// `--closed-ticket-retention` (one pass, as the server does
    /// periodically).
    Run {
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Token management.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it is shown only once).
    Create {
        /// admin, maintainer, ticket-system or uploader.
        #[arg(long)]
        role: String,
        /// Ticket scope: required for uploader (one ticket) and
        /// ticket-system (a ticket, `PREFIX*`, or `*` for all).
        #[arg(long)]
        ticket: Option<String>,
        /// Who holds it (free text, shown by `token list`).
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime such as `30d`, `12h`, `2w`; never expires by default.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (ids, roles, scopes, names; never the secrets).
    List,
    /// Revoke a token by id; its dashboard sessions end too.
    Revoke {
        /// Token id from `token list`.
        id: i64,
    },
}

/// Options of `serve`.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Address to listen on. [default: 127.0.0.1:8080]
    #[arg(long, env = "SUPPORT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Largest chunk accepted, in bytes (advertised to clients).
    /// [default: 8388608]
    #[arg(long, env = "SUPPORT_MAX_CHUNK_SIZE", value_name = "BYTES")]
    pub max_chunk_size: Option<u64>,
    /// Largest image accepted, in bytes. [default: 1099511627776 (1 TiB)]
    #[arg(long, env = "SUPPORT_MAX_IMAGE_SIZE", value_name = "BYTES")]
    pub max_image_size: Option<u64>,
    /// Bytes all images of one ticket may use together.
    /// [default: 2199023255552 (2 TiB)]
    #[arg(long, env = "SUPPORT_TICKET_QUOTA", value_name = "BYTES")]
    pub ticket_quota: Option<u64>,
    /// An upload with no new chunk for this long expires and its space is
    /// reclaimed (`24h`, `7d`...). [default: 24h]
    #[arg(long, env = "SUPPORT_UPLOAD_TTL", value_name = "DURATION")]
    pub upload_ttl: Option<String>,
    /// Parallel chunk requests suggested to clients. [default: 4]
    #[arg(long, env = "SUPPORT_UPLOAD_CONCURRENCY", value_name = "N")]
    pub upload_concurrency: Option<u32>,
    /// Ingest/webhook worker tasks in this process (0: API only; ignored
    /// with `--role api`). [default: 2]
    #[arg(long, env = "SUPPORT_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// A running job's lease; another worker takes the job over when a
    /// lease is not renewed in time. [default: 60s]
    #[arg(long, env = "SUPPORT_JOB_LEASE", value_name = "DURATION")]
    pub job_lease: Option<String>,
    /// Lifetime of a dashboard session. [default: 12h]
    #[arg(long, env = "SUPPORT_SESSION_TTL", value_name = "DURATION")]
    pub session_ttl: Option<String>,
    /// Mark the session cookie `Secure` (set when served over HTTPS).
    /// [default: false]
    #[arg(long, env = "SUPPORT_SECURE_COOKIES", value_name = "BOOL")]
    pub secure_cookies: Option<bool>,
    /// Origins allowed by CORS, comma-separated; CORS is off when empty.
    /// [default: empty]
    #[arg(long, env = "SUPPORT_CORS_ORIGINS", value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// Log format: `text` or `json`. [default: text]
    #[arg(long, env = "SUPPORT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Time limit for a request to produce its response headers (upload
    /// completion hashes the whole image within it). [default: 600s]
    #[arg(long, env = "SUPPORT_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Base URL clients should use (for links in webhook events), e.g.
    /// `https://support.example.com`. [default: http://<listen>]
    #[arg(long, env = "SUPPORT_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Retention: images of a ticket closed this long ago (`90d`, `26w`...)
    /// are deleted, bytes and rows; `off` keeps everything. Images uploaded
    /// after the ticket was closed are kept. [default: off]
    #[arg(long, env = "SUPPORT_CLOSED_TICKET_RETENTION", value_name = "DURATION")]
    pub closed_ticket_retention: Option<String>,
    /// What this process does: `api` (REST API, uploads, dashboard; no job
    /// workers), `worker` (ingest and webhook jobs, upload reaping; over
    /// HTTP only /healthz and /metrics) or `all`. Replicas of any roles may
    /// share one PostgreSQL. [default: all]
    #[arg(long, env = "SUPPORT_ROLE", value_name = "ROLE")]
    pub role: Option<String>,
    /// Test hook, never for production: every ingest job first waits this
    /// long (so tests can kill a replica in the middle of a job).
    #[arg(
        long,
        env = "SUPPORT_TEST_INGEST_DELAY",
        value_name = "DURATION",
        hide = true
    )]
    pub test_ingest_delay: Option<String>,
}

/// What a `serve` process does (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// REST API, uploads and dashboard; no job workers.
    Api,
    /// Jobs and the reaper; only health and metrics over HTTP.
    Worker,
    /// Both.
    All,
}

impl ServerRole {
    /// Parses `api`, `worker` or `all`.
    pub fn parse(s: &str) -> Option<ServerRole> {
        match s.trim() {
            "api" => Some(ServerRole::Api),
            "worker" => Some(ServerRole::Worker),
            "all" => Some(ServerRole::All),
            _ => None,
        }
    }
    /// The name shown in `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Api => "api",
            ServerRole::Worker => "worker",
            ServerRole::All => "all",
        }
    }
    /// Whether it serves the REST API, uploads and the dashboard.
    pub fn serves_api(self) -> bool {
        self != ServerRole::Worker
    }
    /// Whether it runs job workers and the reaper.
    pub fn runs_jobs(self) -> bool {
        self != ServerRole::Api
    }
}

/// The resolved configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// PostgreSQL URL, or `None` for SQLite in the data directory.
    pub database_url: Option<String>,
    /// Where image bytes live.
    pub storage: StorageConfig,
    /// Bytes.
    pub max_chunk_size: u64,
    /// Bytes.
    pub max_image_size: u64,
    /// Bytes per ticket.
    pub ticket_quota: u64,
    /// Seconds.
    pub upload_ttl: i64,
    /// Advertised parallelism.
    pub upload_concurrency: u32,
    /// Worker tasks.
    pub workers: usize,
    /// Seconds.
    pub job_lease: i64,
    /// Seconds.
    pub session_ttl: i64,
    /// `Secure` cookies.
    pub secure_cookies: bool,
    /// CORS origins (empty: off).
    pub cors_origins: Vec<String>,
    /// `text` or `json`.
    pub log_format: String,
    /// Seconds.
    pub request_timeout: i64,
    /// Base URL for links.
    pub public_url: String,
    /// Seconds after a ticket's closing when its images are deleted;
    /// `None`: never.
    pub closed_ticket_retention: Option<i64>,
    /// What this process does.
    pub role: ServerRole,
    /// Seconds every ingest job waits first (test hook; 0 in production).
    pub test_ingest_delay: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            storage: StorageConfig::Local,
            max_chunk_size: 8 << 20,
            max_image_size: 1 << 40,
            ticket_quota: 2 << 40,
            upload_ttl: 86400,
            upload_concurrency: 4,
            workers: 2,
            job_lease: 60,
            session_ttl: 12 * 3600,
            secure_cookies: false,
            cors_origins: Vec::new(),
            log_format: "text".into(),
            request_timeout: 600,
            public_url: String::new(),
            closed_ticket_retention: None,
            role: ServerRole::All,
            test_ingest_delay: 0,
        }
    }
}

/// The TOML file: `serve` options plus the common ones.
#[derive(Debug, Default)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    storage: StorageArgs,
    serve: ServeArgs,
}

fn duration(name: &str, v: Option<String>, default: i64) -> anyhow::Result<i64> {
    match v {
        None => Ok(default),
        Some(s) => crate::auth::parse_duration(&s).ok_or_else(|| {
            anyhow::anyhow!("{name}: {s:?} is not a duration; write e.g. 90s, 15m, 12h, 7d")
        }),
    }
}

impl Config {
    /// Merges flags/environment over the config file over the defaults.
    pub fn resolve(common: &CommonArgs, serve: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &common.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let f = file.serve;
        let s = serve.clone();
        let listen = s.listen.or(f.listen).unwrap_or(d.listen);
        let cfg = Config {
            data_dir: common
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(d.data_dir),
            database_url: common
                .database_url
                .clone()
                .or(file.database_url)
                .filter(|u| !u.is_empty()),
            storage: storage_config(&common.storage, &file.storage)?,
            max_chunk_size: s
                .max_chunk_size
                .or(f.max_chunk_size)
                .unwrap_or(d.max_chunk_size),
            max_image_size: s
                .max_image_size
                .or(f.max_image_size)
                .unwrap_or(d.max_image_size),
            ticket_quota: s.ticket_quota.or(f.ticket_quota).unwrap_or(d.ticket_quota),
            upload_ttl: duration("upload_ttl", s.upload_ttl.or(f.upload_ttl), d.upload_ttl)?,
            upload_concurrency: s
                .upload_concurrency
                .or(f.upload_concurrency)
                .unwrap_or(d.upload_concurrency),
            workers: s.workers.or(f.workers).unwrap_or(d.workers),
            job_lease: duration("job_lease", s.job_lease.or(f.job_lease), d.job_lease)?,
            session_ttl: duration(
                "session_ttl",
                s.session_ttl.or(f.session_ttl),
                d.session_ttl,
            )?,
            secure_cookies: s
                .secure_cookies
                .or(f.secure_cookies)
                .unwrap_or(d.secure_cookies),
            cors_origins: s
                .cors_origins
                .or(f.cors_origins)
                .map(|o| {
                    o.split(',')
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            log_format: s.log_format.or(f.log_format).unwrap_or(d.log_format),
            request_timeout: duration(
                "request_timeout",
                s.request_timeout.or(f.request_timeout),
                d.request_timeout,
            )?,
            public_url: s
                .public_url
                .or(f.public_url)
                .unwrap_or_else(|| format!("http://{listen}")),
            closed_ticket_retention: match s
                .closed_ticket_retention
                .or(f.closed_ticket_retention)
                .filter(|v| !v.trim().is_empty() && v.trim() != "off")
            {
                None => None,
                Some(v) => Some(duration("closed_ticket_retention", Some(v), 0)?),
            },
            listen,
            role: match s.role.or(f.role) {
                None => d.role,
                Some(r) => ServerRole::parse(&r).ok_or_else(|| {
                    anyhow::anyhow!("role: {r:?} is not a role; write api, worker or all")
                })?,
            },
            test_ingest_delay: match s.test_ingest_delay.or(f.test_ingest_delay) {
                None => 0,
                Some(v) => duration("test_ingest_delay", Some(v), 0)?,
            },
        };
        anyhow::ensure!(
            (1..=(256u64 << 20)).contains(&cfg.max_chunk_size),
            "max_chunk_size must be between 1 byte and 256 MiB"
        );
        anyhow::ensure!(
            cfg.log_format == "text" || cfg.log_format == "json",
            "log_format must be `text` or `json`"
        );
        Ok(cfg)
    }

    /// Only the state location (for `token` and `migrate`).
    pub fn resolve_common(common: &CommonArgs) -> anyhow::Result<Config> {
        Self::resolve(common, &ServeArgs::default())
    }
}

/// AWS variables the S3 storage reads (credentials are never flags).
pub const S3_ENV: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
];

/// Every environment variable `support-server` reads: the variable of each
/// flag of every subcommand, plus `RUST_LOG` (log filter). Deployment files
/// (docker-compose.yml, the Dockerfile) are checked against this list.
pub fn env_names() -> Vec<String> {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.insert(e.to_string_lossy().into_owned());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out.insert("RUST_LOG".into());
    // S3 storage credentials and region, from the standard AWS environment
    // (see docs/storage.md).
    for aws in S3_ENV {
        out.insert(aws.into());
    }
    out.into_iter().collect()
}

/// Flags/environment over the file; checks that s3 has a bucket.
fn storage_config(flags: &StorageArgs, file: &StorageArgs) -> anyhow::Result<StorageConfig> {
    let f = flags.clone();
    let g = file.clone();
    let backend = f.storage.or(g.storage).unwrap_or_else(|| "local".into());
    match backend.as_str() {
        "local" => Ok(StorageConfig::Local),
        "s3" => {
            let bucket = f.s3_bucket.or(g.s3_bucket).unwrap_or_default();
            anyhow::ensure!(
                !bucket.is_empty(),
                "storage is s3 but no bucket is given: set s3_bucket (SUPPORT_S3_BUCKET)"
            );
            let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
            Ok(StorageConfig::S3(crate::storage::S3Config {
                bucket,
                endpoint: nonempty(f.s3_endpoint.or(g.s3_endpoint)),
                region: nonempty(f.s3_region.or(g.s3_region)),
                prefix: f
                    .s3_prefix
                    .or(g.s3_prefix)
                    .unwrap_or_default()
                    .trim_matches('/')
                    .to_string(),
                allow_http: f.s3_allow_http.or(g.s3_allow_http).unwrap_or(false),
                cache_bytes: f.s3_cache_size.or(g.s3_cache_size).unwrap_or(64 << 20),
            }))
        }
        other => anyhow::bail!("storage must be `local` or `s3`, not {other:?}"),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let bad = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("config file {} is not valid: {e}", path.display())
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(&e))?;
    let text_of = |v: toml::Value| match v {
        toml::Value::String(s) => Ok(s),
        other => Err(anyhow::anyhow!(
            "config file {}: expected a string, found {other}",
            path.display()
        )),
    };
    let data_dir = table
        .remove("data_dir")
        .map(text_of)
        .transpose()?
        .map(PathBuf::from);
    let database_url = table.remove("database_url").map(text_of).transpose()?;
    let mut storage = toml::Table::new();
    for k in STORAGE_KEYS {
        if let Some(v) = table.remove(k) {
            storage.insert(k.to_string(), v);
        }
    }
    let storage = StorageArgs::deserialize(toml::Value::Table(storage)).map_err(|e| bad(&e))?;
    let serve = ServeArgs::deserialize(toml::Value::Table(table)).map_err(|e| bad(&e))?;
    Ok(FileConfig {
        data_dir,
        database_url,
        storage,
        serve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:9\"\nworkers = 5\nupload_ttl = \"2h\"\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(p),
            ..Default::default()
        };
        let serve = ServeArgs {
            workers: Some(1),
            ..Default::default()
        };
        let c = Config::resolve(&common, &serve).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.workers, 1);
        assert_eq!(c.upload_ttl, 7200);
        assert_eq!(c.max_chunk_size, 8 << 20);
        assert_eq!(c.storage, StorageConfig::Local);
        assert_eq!(c.role, ServerRole::All);
    }

    #[test]
    fn s3_storage_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "storage = \"s3\"\ns3_bucket = \"images\"\ns3_prefix = \"/a/b/\"\nworkers = 3\n",
        )
        .unwrap();
        let mut common = CommonArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        common.storage.s3_endpoint = Some("http://127.0.0.1:9000".into());
        common.storage.s3_allow_http = Some(true);
        let c = Config::resolve(&common, &ServeArgs::default()).unwrap();
        assert_eq!(c.workers, 3);
        let StorageConfig::S3(s3) = c.storage else {
            panic!("not s3")
        };
        assert_eq!(s3.bucket, "images");
        assert_eq!(s3.prefix, "a/b");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(s3.allow_http);
        assert_eq!(s3.cache_bytes, 64 << 20);
        // No bucket, or an unknown backend, is refused.
        std::fs::write(&p, "storage = \"s3\"\n").unwrap();
        let common = CommonArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        assert!(Config::resolve(&common, &ServeArgs::default()).is_err());
        std::fs::write(&p, "storage = \"ftp\"\n").unwrap();
        assert!(Config::resolve(&common, &ServeArgs::default()).is_err());
    }

    #[test]
    fn roles() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "role = \"worker\"\n").unwrap();
        let common = CommonArgs {
            config: Some(p),
            ..Default::default()
        };
        let c = Config::resolve(&common, &ServeArgs::default()).unwrap();
        assert_eq!(c.role, ServerRole::Worker);
        assert!(c.role.runs_jobs() && !c.role.serves_api());
        let api = ServeArgs {
            role: Some("api".into()),
            ..Default::default()
        };
        let c = Config::resolve(&common, &api).unwrap();
        assert!(c.role.serves_api() && !c.role.runs_jobs());
        let bad = ServeArgs {
            role: Some("both".into()),
            ..Default::default()
        };
        let e = Config::resolve(&common, &bad).unwrap_err().to_string();
        assert!(e.contains("api, worker or all"), "{e}");
    }

    #[test]
    fn env_names_cover_every_subcommand() {
        let names = env_names();
        for n in [
            "DATABASE_URL",
            "SUPPORT_DATA_DIR",
            "SUPPORT_LISTEN",
            "RUST_LOG",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }
}
