//! HTTP client for the upload protocol (docs/upload-protocol.md), with
//! retries: temporary failures (connection refused or reset, timeouts, 5xx,
//! 429, a chunk garbled on the way) are retried with exponential backoff and
//! jitter for up to `retry_for`; refusals (bad token, wrong ticket, quota,
//! TLS mismatch) end at once with one sentence saying what to do.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

/// How a request failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Retrying will not help; the message says what to do.
    #[error("{0}")]
    Refused(String),
    /// The server does not know the upload (expired, deleted): start over.
    #[error("the server no longer knows upload {0} (expired or deleted); run the same command again to start over")]
    UnknownUpload(String),
    /// The server holds different bytes than this run produces (the source
    /// changed since an interrupted run).
    #[error("the server holds different bytes at offset {0} than this run produces; run the same command again to start over")]
    Conflict(u64),
    /// Temporary failures went on for longer than allowed.
    #[error("{0}")]
    GaveUp(String),
}

/// A byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// Server limits (only what the agent uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    /// Largest chunk.
    pub max_chunk_size: u64,
    /// Suggested parallel requests.
    pub concurrency: u32,
}

/// The upload object (only what the agent uses).
#[derive(Debug, Clone, Deserialize)]
pub struct UploadView {
    /// Upload id (also the image id).
    pub id: String,
    /// `uploading`, then the image's status.
    pub status: String,
    /// Ranges held.
    pub ranges: Vec<ByteRange>,
}

/// One chunk of a completion manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestChunk {
    /// First byte.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First pause.
    pub base: Duration,
    /// Longest pause.
    pub max: Duration,
    /// Give up after failing for this long without a success.
    pub retry_for: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            base: Duration::from_millis(250),
            max: Duration::from_secs(10),
            retry_for: Duration::from_secs(15 * 60),
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server base URL, e.g. `https://support.example.com`.
    pub server: String,
    /// Bearer token.
    pub token: String,
    /// Extra CA certificate (PEM) for a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// Retries.
    pub retry: Retry,
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
    retry: Retry,
}

enum Attempt<T> {
    Done(T),
    Temporary(String),
    Fatal(UploadError),
}

/// SHA-256 in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Client {
    /// Builds the client (rustls with the system's roots plus `ca_file`;
    /// `HTTPS_PROXY`/`NO_PROXY` from the environment).
    pub fn new(cfg: &Config) -> anyhow::Result<Client> {
        let base = cfg.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!(
                "the server URL {base:?} must start with https:// (or http:// on a trusted network)"
            );
        }
        let mut b = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("support-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            b = b.add_root_certificate(load_ca(ca)?);
        }
        let http = b
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up HTTPS: {e}"))?;
        Ok(Client {
            http,
            base,
            token: cfg.token.clone(),
            retry: cfg.retry,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Runs `f` until it succeeds, fails for good, or temporary failures
    /// last longer than the policy allows. `on_wait(msg)` is told of each
    /// pause (for the progress display).
    fn retrying<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> Attempt<T>,
        on_wait: &dyn Fn(&str),
    ) -> Result<T, UploadError> {
        let start = Instant::now();
        let mut pause = self.retry.base;
        loop {
            match f() {
                Attempt::Done(t) => return Ok(t),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Temporary(msg) => {
                    if start.elapsed() >= self.retry.retry_for {
                        return Err(UploadError::GaveUp(format!(
                            "{what} kept failing for {} s ({msg}); check the network and run the same command again to resume",
                            start.elapsed().as_secs()
                        )));
                    }
                    // Jitter: a random pause in [pause / 4, pause], so many
                    // agents do not come back in step.
                    let ms = pause.as_millis().max(4) as u64;
                    let sleep = Duration::from_millis(rand::random_range(ms / 4..=ms));
                    on_wait(&format!(
                        "{what}: {msg}; retrying in {:.1} s",
                        sleep.as_secs_f64()
                    ));
                    std::thread::sleep(sleep);
                    pause = (pause * 2).min(self.retry.max);
                }
            }
        }
    }

    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Attempt<reqwest::blocking::Response> {
        match rb.bearer_auth(&self.token).send() {
            Ok(r) => Attempt::Done(r),
            Err(e) => classify_transport(&self.base, &e),
        }
    }

    /// `GET /api/v1/uploads/limits`.
    pub fn limits(&self, on_wait: &dyn Fn(&str)) -> Result<Limits, UploadError> {
        self.retrying(
            "asking the server's limits",
            || match self.send(self.http.get(self.url("/api/v1/uploads/limits"))) {
                Attempt::Done(r) => json_or(r, None),
                Attempt::Temporary(m) => Attempt::Temporary(m),
                Attempt::Fatal(e) => Attempt::Fatal(e),
            },
            on_wait,
        )
    }

    /// `POST /api/v1/uploads` (`size` None: a streaming upload).
    pub fn create(
        &self,
        ticket: Option<&str>,
        size: Option<u64>,
        name: &str,
        on_wait: &dyn Fn(&str),
    ) -> Result<UploadView, UploadError> {
        let mut body = serde_json::json!({ "name": name });
        if let Some(t) = ticket {
            body["ticket"] = t.into();
        }
        if let Some(s) = size {
            body["size"] = s.into();
        }
        self.retrying(
            "creating the upload",
            || match self.send(self.http.post(self.url("/api/v1/uploads")).json(&body)) {
                Attempt::Done(r) => json_or(r, ticket),
                Attempt::Temporary(m) => Attempt::Temporary(m),
                Attempt::Fatal(e) => Attempt::Fatal(e),
            },
            on_wait,
        )
    }

    /// `GET /api/v1/uploads/{id}`.
    pub fn get(&self, id: &str, on_wait: &dyn Fn(&str)) -> Result<UploadView, UploadError> {
        self.retrying(
            "asking which chunks the server holds",
            || match self.send(self.http.get(self.url(&format!("/api/v1/uploads/{id}")))) {
                Attempt::Done(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    Attempt::Fatal(UploadError::UnknownUpload(id.to_string()))
                }
                Attempt::Done(r) => json_or(r, None),
                Attempt::Temporary(m) => Attempt::Temporary(m),
                Attempt::Fatal(e) => Attempt::Fatal(e),
            },
            on_wait,
        )
    }

    /// `DELETE /api/v1/uploads/{id}` (best effort, no retries).
    pub fn abandon(&self, id: &str) {
        let _ = self.send(self.http.delete(self.url(&format!("/api/v1/uploads/{id}"))));
    }

    /// `PUT` one chunk; true when the server stored it (false: it held the
    /// bytes already).
    pub fn put_chunk(
        &self,
        id: &str,
        offset: u64,
        data: &[u8],
        sha256: &str,
        on_wait: &dyn Fn(&str),
    ) -> Result<bool, UploadError> {
        let url = self.url(&format!("/api/v1/uploads/{id}/chunks/{offset}"));
        self.retrying(
            "sending a chunk",
            || {
                let rb = self
                    .http
                    .put(&url)
                    .header("x-chunk-sha256", sha256)
                    .header("content-type", "application/octet-stream")
                    .body(data.to_vec());
                match self.send(rb) {
                    Attempt::Done(r) => {
                        let st = r.status();
                        if st.is_success() {
                            return Attempt::Done(st == reqwest::StatusCode::CREATED);
                        }
                        let (code, msg) = error_of(r);
                        match (st.as_u16(), code.as_str()) {
                            (404, _) => Attempt::Fatal(UploadError::UnknownUpload(id.to_string())),
                            // Garbled on the way: send it again.
                            (422, _) => Attempt::Temporary(msg),
                            (409, "overlap_conflict") => {
                                Attempt::Fatal(UploadError::Conflict(offset))
                            }
                            _ => refusal(st.as_u16(), &code, &msg, None),
                        }
                    }
                    Attempt::Temporary(m) => Attempt::Temporary(m),
                    Attempt::Fatal(e) => Attempt::Fatal(e),
                }
            },
            on_wait,
        )
    }

    /// `POST .../complete` with `body`; returns the image object.
    pub fn complete(
        &self,
        id: &str,
        body: &serde_json::Value,
        on_wait: &dyn Fn(&str),
    ) -> Result<serde_json::Value, UploadError> {
        let url = self.url(&format!("/api/v1/uploads/{id}/complete"));
        self.retrying(
            "completing the upload",
            || match self.send(
                self.http
                    .post(&url)
                    .json(body)
                    .timeout(Duration::from_secs(3600)),
            ) {
                Attempt::Done(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    Attempt::Fatal(UploadError::UnknownUpload(id.to_string()))
                }
                Attempt::Done(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                    let (code, msg) = error_of(r);
                    if code == "completing" {
                        // Our own earlier attempt is still hashing.
                        Attempt::Temporary(msg)
                    } else {
                        Attempt::Fatal(UploadError::Refused(format!(
                            "the server did not accept the finished upload: {msg}"
                        )))
                    }
                }
                // The bytes held are not the ones listed: start over.
                Attempt::Done(r) if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY => {
                    Attempt::Fatal(UploadError::Conflict(0))
                }
                Attempt::Done(r) => json_or(r, None),
                Attempt::Temporary(m) => Attempt::Temporary(m),
                Attempt::Fatal(e) => Attempt::Fatal(e),
            },
            on_wait,
        )
    }
}

fn load_ca(path: &Path) -> anyhow::Result<reqwest::Certificate> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", path.display()))?;
    reqwest::Certificate::from_pem(&pem).map_err(|_| {
        anyhow::anyhow!(
            "{} holds no PEM certificate; give the private CA's certificate in PEM format",
            path.display()
        )
    })
}

/// Transport errors: TLS problems are permanent, the rest temporary.
fn classify_transport<T>(base: &str, e: &reqwest::Error) -> Attempt<T> {
    let mut chain = String::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        chain.push_str(&s.to_string());
        chain.push_str(": ");
        src = s.source();
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return Attempt::Fatal(UploadError::Refused(format!(
            "the TLS certificate of {base} is not trusted ({}); check the URL, or give the server's CA with --ca-file",
            last_cause(e)
        )));
    }
    if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        return Attempt::Fatal(UploadError::Refused(format!(
            "{base} does not speak TLS ({}); check the URL (http:// or https://, and the port)",
            last_cause(e)
        )));
    }
    if e.is_builder() {
        return Attempt::Fatal(UploadError::Refused(format!(
            "the server URL {base} is not usable: {e}"
        )));
    }
    let what = if e.is_timeout() {
        format!("{base} did not answer in time")
    } else if e.is_connect() {
        format!("cannot reach {base} ({})", last_cause(e))
    } else {
        format!("the connection to {base} failed ({})", last_cause(e))
    };
    Attempt::Temporary(what)
}

fn last_cause(e: &reqwest::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// The error code and message of a JSON error answer.
fn error_of(r: reqwest::blocking::Response) -> (String, String) {
    let status = r.status();
    let text = r.text().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    let msg = v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    (code, msg)
}

/// One sentence for each way the server refuses; 5xx and 429 are temporary.
fn refusal<T>(status: u16, code: &str, msg: &str, ticket: Option<&str>) -> Attempt<T> {
    let s = match status {
        500..=599 | 429 | 408 => {
            return Attempt::Temporary(format!("the server answered {status} ({msg})"))
        }
        401 => "the server refused the token (unknown, revoked or expired); ask your support contact for a new upload token".to_string(),
        403 => match ticket {
            Some(t) => format!("this token may not upload into ticket {t}; check --ticket or ask for a token for that ticket"),
            None => format!("this token is not allowed to do that ({msg}); check --ticket or ask for an upload token"),
        },
        413 if code == "quota_exceeded" => format!("the server refused the image: {msg}"),
        413 => format!("the image is larger than the server accepts: {msg}"),
        _ => format!("the server refused the request ({status} {code}): {msg}"),
    };
    Attempt::Fatal(UploadError::Refused(s))
}

fn json_or<T: serde::de::DeserializeOwned>(
    r: reqwest::blocking::Response,
    ticket: Option<&str>,
) -> Attempt<T> {
    let st = r.status();
    if st.is_success() {
        return match r.json::<T>() {
            Ok(v) => Attempt::Done(v),
            // A proxy cut the answer short, or it is not our server.
            Err(e) => Attempt::Temporary(format!("unreadable answer from the server ({e})")),
        };
    }
    let (code, msg) = error_of(r);
    refusal(st.as_u16(), &code, &msg, ticket)
}
