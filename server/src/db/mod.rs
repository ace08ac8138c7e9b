//! The database: one [`Database`] trait with a SQLite and a PostgreSQL
//! implementation (atuin-style). Both run the same runtime queries (`$N`
//! placeholders are valid on both); only the job claim and the upload locks
//! differ (`FOR UPDATE [SKIP LOCKED]` on PostgreSQL, SQLite's single writer
//! elsewhere).
//!
//! Everything that must hold across replicas (several `support-server`
//! processes on one PostgreSQL) is decided here, never in one process's
//! memory: job claims and leases, upload range locks, the first admin
//! token.

mod sql;

use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

pub use sql::{PostgresDb, SqliteDb};

/// Errors of the database layer.
pub type DbError = sqlx::Error;
/// Result of the database layer.
pub type DbResult<T> = Result<T, DbError>;

/// A stored API token (its hash only).
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Row id (shown by `token list`, used by `token revoke`).
    pub id: i64,
    /// `admin`, `maintainer`, `ticket-system` or `uploader`.
    pub role: String,
    /// Ticket scope: the one ticket of an uploader; an exact ticket, a
    /// `PREFIX*` pattern or `*` for a ticket system.
    pub ticket: Option<String>,
    /// Free text naming the holder.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Unix seconds when revoked.
    pub revoked_at: Option<i64>,
}

/// A dashboard session joined with its token.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The token that signed in.
    pub token: TokenRow,
    /// The per-session CSRF token cookie-authenticated writes must echo.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A new upload (an image in status `uploading`).
#[derive(Debug, Clone)]
pub struct NewImage {
    /// Server-generated id (32 hex digits).
    pub id: String,
    /// Validated ticket reference.
    pub ticket: String,
    /// Client-supplied display name (validated).
    pub name: String,
    /// Declared size in bytes.
    pub size: i64,
    /// Declared SHA-256 (hex), if given at creation.
    pub sha256: Option<String>,
    /// Unix seconds.
    pub now: i64,
    /// When the upload expires unless more chunks arrive.
    pub upload_expires_at: i64,
    /// Token that created it.
    pub uploaded_by: i64,
}

/// An image row: upload state, pipeline status, index and triage fields.
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct ImageRow {
    pub id: String,
    pub ticket: String,
    pub status: String,
    pub reason: Option<String>,
    pub name: String,
    pub size: i64,
    pub sha256: Option<String>,
    pub received: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub upload_expires_at: Option<i64>,
    pub index: IndexFields,
    pub triage_status: String,
    pub assignee: Option<String>,
    pub tags: String,
    pub notes: String,
}

/// What the ingest pipeline indexes from an image.
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct IndexFields {
    pub virtual_size: Option<i64>,
    pub fs_uuid: Option<String>,
    pub label: Option<String>,
    pub fs_type: Option<String>,
    /// Space-delimited with a leading and trailing space.
    pub features: Option<String>,
    pub block_size: Option<i64>,
    pub block_count: Option<i64>,
    pub free_blocks: Option<i64>,
    pub inode_count: Option<i64>,
    pub free_inodes: Option<i64>,
    pub group_count: Option<i64>,
    pub state: Option<String>,
    pub error_count: Option<i64>,
    pub first_error_function: Option<String>,
    pub first_error_line: Option<i64>,
    pub first_error_time: Option<i64>,
    pub last_error_function: Option<String>,
    pub last_error_line: Option<i64>,
    pub last_error_time: Option<i64>,
    pub journal_state: Option<String>,
    pub findings_errors: Option<i64>,
    pub findings_warnings: Option<i64>,
}

/// An acknowledged chunk of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    /// Byte offset in the image.
    pub offset: i64,
    /// Length in bytes.
    pub length: i64,
    /// SHA-256 (hex) of the chunk.
    pub sha256: String,
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Row id.
    pub id: i64,
    /// `ingest` or `webhook`.
    pub kind: String,
    /// The image it is about.
    pub image_id: Option<String>,
    /// JSON payload.
    pub payload: String,
    /// Attempts including this one.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// `ingest` or `webhook`.
    pub kind: &'static str,
    /// The image it is about.
    pub image_id: Option<String>,
    /// JSON payload.
    pub payload: String,
    /// Unix seconds.
    pub run_at: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
}

/// Kind of an upload lock: a chunk holds its own range while it compares
/// and writes its bytes.
pub const LOCK_CHUNK: &str = "chunk";
/// Kind of an upload lock: a completion or an abort holds the whole upload.
pub const LOCK_CLOSE: &str = "close";

/// A lock to take on a byte range of an upload, shared by every replica on
/// the database (see `upload_locks` in `migrations/*/0002_replicas.sql`).
#[derive(Debug, Clone)]
pub struct NewRangeLock<'a> {
    /// The upload.
    pub upload_id: &'a str,
    /// First byte.
    pub start: i64,
    /// One past the last byte.
    pub end: i64,
    /// [`LOCK_CHUNK`] or [`LOCK_CLOSE`].
    pub kind: &'static str,
    /// Who holds it (replica instance), for diagnostics.
    pub owner: &'a str,
    /// Unix seconds.
    pub now: i64,
    /// Until when it holds unless renewed.
    pub expires_at: i64,
}

/// Outcome of [`Database::lock_upload_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeLock {
    /// Taken: the lock's id, to renew and release it.
    Taken(i64),
    /// A live lock overlaps the range; `closing` when one of them is a
    /// completion's or an abort's ([`LOCK_CLOSE`]).
    Busy {
        /// A completion or abort holds (part of) the range.
        closing: bool,
    },
    /// The upload is gone or no longer `uploading`.
    Closed,
}

/// The lease a worker holds on a job. Results are committed only while it
/// is still held, in the same transaction that ends the job, so a job whose
/// lease was taken over by another replica never finishes twice.
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    /// The job.
    pub job_id: i64,
    /// The worker holding it.
    pub owner: &'a str,
}

/// A registered webhook.
#[derive(Debug, Clone)]
pub struct WebhookRow {
    /// Row id.
    pub id: i64,
    /// Ticket scope (exact, `PREFIX*` or `*`).
    pub ticket: String,
    /// Where events are POSTed.
    pub url: String,
    /// HMAC-SHA256 key (kept in clear: the server must sign with it).
    pub secret: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Triage changes; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct Triage {
    /// New triage status.
    pub triage_status: Option<String>,
    /// New assignee (`Some(None)` clears it).
    pub assignee: Option<Option<String>>,
    /// New tags, space-delimited with leading and trailing space.
    pub tags: Option<String>,
    /// New notes.
    pub notes: Option<String>,
}

/// A value bound to a dynamically built query.
#[derive(Debug, Clone)]
pub enum Bind {
    /// An integer.
    I(i64),
    /// A string.
    S(String),
}

/// A query built from list filters: SQL with `$N` placeholders and its binds.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `WHERE ...` clause (may be empty).
    pub where_sql: String,
    /// `ORDER BY ...` clause.
    pub order_sql: String,
    /// Values for the placeholders, in order.
    pub binds: Vec<Bind>,
    /// Paging.
    pub offset: i64,
    /// Paging.
    pub limit: i64,
}

/// A ticket's lifecycle row (tickets without one are open).
#[derive(Debug, Clone, Default)]
pub struct TicketRow {
    /// The ticket reference.
    pub ticket: String,
    /// Unix seconds when it was closed; `None`: open.
    pub closed_at: Option<i64>,
    /// Token that closed it.
    pub closed_by: Option<i64>,
    /// Images of the ticket (any status).
    pub images: i64,
}

/// Everything the server stores in its database.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Stores a token hash; returns its id.
    async fn create_token(
        &self,
        hash: &str,
        role: &str,
        ticket: Option<&str>,
        name: &str,
        now: i64,
        expires_at: Option<i64>,
    ) -> DbResult<i64>;
    /// The token with this hash, revoked or not.
    async fn token_by_hash(&self, hash: &str) -> DbResult<Option<TokenRow>>;
    /// Every token.
    async fn list_tokens(&self) -> DbResult<Vec<TokenRow>>;
    /// Revokes a token (and ends its sessions); false if unknown.
    async fn revoke_token(&self, id: i64, now: i64) -> DbResult<bool>;
    /// Number of tokens ever created.
    async fn count_tokens(&self) -> DbResult<i64>;
    /// Stores the first admin token's hash if no token exists and no other
    /// replica did it first (once per database, however many replicas start
    /// together); true if this call stored it.
    async fn create_first_admin(&self, hash: &str, now: i64) -> DbResult<bool>;

    /// Stores a session.
    async fn create_session(
        &self,
        hash: &str,
        token_id: i64,
        csrf: &str,
        now: i64,
        expires_at: i64,
    ) -> DbResult<()>;
    /// A live session by its id's hash.
    async fn session_by_hash(&self, hash: &str, now: i64) -> DbResult<Option<SessionRow>>;
    /// Ends a session.
    async fn delete_session(&self, hash: &str) -> DbResult<()>;
    /// Drops expired sessions.
    async fn delete_expired_sessions(&self, now: i64) -> DbResult<u64>;

    /// Creates an upload unless the ticket's quota (bytes, over all its
    /// images) would be exceeded; false if it would.
    async fn create_upload(&self, img: &NewImage, quota: i64) -> DbResult<bool>;
    /// One image.
    async fn get_image(&self, id: &str) -> DbResult<Option<ImageRow>>;
    /// A page of images and the total matching.
    async fn list_images(&self, filter: &Filter) -> DbResult<(Vec<ImageRow>, i64)>;
    /// Applies triage changes; false if unknown.
    async fn update_triage(&self, id: &str, t: &Triage, now: i64) -> DbResult<bool>;
    /// Removes an image and everything attached; false if unknown.
    async fn delete_image(&self, id: &str) -> DbResult<bool>;
    /// Moves an image to `status` (with a reason) if it is in `from`.
    async fn set_status(
        &self,
        id: &str,
        from: &[&str],
        status: &str,
        reason: Option<&str>,
        now: i64,
    ) -> DbResult<bool>;
    /// Ids of uploads whose expiry passed.
    async fn expired_uploads(&self, now: i64) -> DbResult<Vec<String>>;
    /// Uploads in progress (status `uploading`), oldest first; with
    /// `expired_before`, only those whose expiry passed then, plus uploads
    /// an interrupted reaper left in status `expired`.
    async fn list_uploads(&self, expired_before: Option<i64>) -> DbResult<Vec<ImageRow>>;
    /// Images the retention policy removes: created no later than their
    /// ticket was closed, the ticket closed at or before `closed_before`,
    /// and not in the upload or analysis pipeline; plus images an
    /// interrupted retention pass left in status `deleting`. Oldest first,
    /// at most `limit`.
    async fn retention_candidates(&self, closed_before: i64, limit: i64)
        -> DbResult<Vec<ImageRow>>;
    /// A ticket's lifecycle row and image count (open with no row).
    async fn get_ticket(&self, ticket: &str) -> DbResult<TicketRow>;
    /// Closes a ticket (keeping the first closing time if already closed)
    /// or, with `closed_at: None`, reopens it.
    async fn set_ticket_closed(
        &self,
        ticket: &str,
        closed_at: Option<i64>,
        by: Option<i64>,
        now: i64,
    ) -> DbResult<()>;
    /// Claims this round of the periodic task `name`: true for exactly one
    /// caller once `now` reaches the task's next run, which moves to
    /// `next_run_at`.
    async fn claim_maintenance(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        next_run_at: i64,
    ) -> DbResult<bool>;

    /// Acknowledged chunks overlapping `[start, end)`.
    async fn chunks_overlapping(&self, id: &str, start: i64, end: i64) -> DbResult<Vec<ChunkRow>>;
    /// Every acknowledged chunk, by offset.
    async fn all_chunks(&self, id: &str) -> DbResult<Vec<ChunkRow>>;
    /// Records an acknowledged chunk; `new_bytes` it added to the coverage;
    /// extends the upload's expiry.
    async fn add_chunk(
        &self,
        id: &str,
        chunk: &ChunkRow,
        new_bytes: i64,
        now: i64,
        expires_at: i64,
    ) -> DbResult<()>;
    /// Marks a fully received, verified upload `queued`, forgets its chunks
    /// and enqueues its ingest job, atomically; false if not `uploading`.
    async fn complete_upload(
        &self,
        id: &str,
        sha256: &str,
        now: i64,
        job: &NewJob,
    ) -> DbResult<bool>;
    /// Takes a lock on a byte range of an upload that is still `uploading`
    /// unless a live lock (one whose `expires_at` has not passed) overlaps
    /// it; atomic across replicas.
    async fn lock_upload_range(&self, lock: &NewRangeLock<'_>) -> DbResult<RangeLock>;
    /// Extends a lock; false if it is gone.
    async fn renew_upload_lock(&self, lock: i64, expires_at: i64) -> DbResult<bool>;
    /// Releases a lock (no error if it is gone).
    async fn unlock_upload_range(&self, lock: i64) -> DbResult<()>;
    /// Fixes the size of an upload created without one (streaming clients
    /// learn it only at the end), unless the ticket's quota would be
    /// exceeded; false if it would, or if the upload is not `uploading`
    /// with an unknown (0) size.
    async fn set_upload_size(&self, id: &str, size: i64, quota: i64) -> DbResult<bool>;

    /// Stores the analysis results and index, marks the image `ready`, ends
    /// the ingest job holding `lease` (`done`) and enqueues `then` (webhook
    /// deliveries), atomically; false (nothing changed) if the image is not
    /// `analyzing` or the lease was lost.
    #[allow(clippy::too_many_arguments)]
    async fn store_results(
        &self,
        id: &str,
        index: &IndexFields,
        parts: &[(&str, i64, String)],
        now: i64,
        lease: &Lease<'_>,
        then: &[NewJob],
    ) -> DbResult<bool>;
    /// Marks an image `failed` with `reason` if it is `queued` or
    /// `analyzing`, ends the job holding `lease` in `job_state` (`done` or
    /// `failed`, with `reason` as its last error) and enqueues `then`,
    /// atomically; false (nothing changed) if the image is in another status
    /// or the lease was lost.
    #[allow(clippy::too_many_arguments)]
    async fn fail_image(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        lease: &Lease<'_>,
        job_state: &str,
        then: &[NewJob],
    ) -> DbResult<bool>;
    /// One stored result part.
    async fn get_result(&self, id: &str, kind: &str, part: i64) -> DbResult<Option<String>>;
    /// Result parts `first..=last` of a kind, by part.
    async fn get_result_parts(
        &self,
        id: &str,
        kind: &str,
        first: i64,
        last: i64,
    ) -> DbResult<Vec<(i64, String)>>;

    /// Adds a job.
    async fn enqueue(&self, job: &NewJob, now: i64) -> DbResult<i64>;
    /// Claims the next runnable job (or one whose lease expired) exactly once.
    async fn claim_job(&self, owner: &str, now: i64, lease_secs: i64) -> DbResult<Option<Job>>;
    /// Extends a lease; false if the lease was lost.
    async fn heartbeat(&self, id: i64, owner: &str, now: i64, lease_secs: i64) -> DbResult<bool>;
    /// Marks a job done.
    async fn finish_job(&self, id: i64, owner: &str, now: i64) -> DbResult<()>;
    /// Puts a job back for another attempt at `run_at`.
    async fn retry_job(
        &self,
        id: i64,
        owner: &str,
        run_at: i64,
        err: &str,
        now: i64,
    ) -> DbResult<()>;
    /// Marks a job failed for good.
    async fn fail_job(&self, id: i64, owner: &str, err: &str, now: i64) -> DbResult<()>;
    /// Until `stop`, notifies `wake` whenever any process on this database
    /// enqueues a job (PostgreSQL `LISTEN`), so workers of one replica start
    /// at once on jobs another enqueued; they also poll.
    async fn listen_for_jobs(
        &self,
        wake: Arc<tokio::sync::Notify>,
        stop: tokio_util::sync::CancellationToken,
    );
    /// Number of jobs per state.
    async fn job_counts(&self) -> DbResult<Vec<(String, i64)>>;
    /// Number of images per status.
    async fn image_counts(&self) -> DbResult<Vec<(String, i64)>>;

    /// Registers a webhook.
    async fn create_webhook(
        &self,
        ticket: &str,
        url: &str,
        secret: &str,
        created_by: i64,
        now: i64,
    ) -> DbResult<i64>;
    /// Every webhook.
    async fn list_webhooks(&self) -> DbResult<Vec<WebhookRow>>;
    /// Removes a webhook; false if unknown.
    async fn delete_webhook(&self, id: i64) -> DbResult<bool>;
}

/// Opens the database named by `url` (`postgres://...`), or the SQLite file
/// under `data_dir` when `url` is `None`, and applies the migrations.
pub async fn connect(url: Option<&str>, data_dir: &Path) -> anyhow::Result<Arc<dyn Database>> {
    use anyhow::Context;
    match url {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            let db = PostgresDb::connect(u)
                .await
                .context("cannot connect to PostgreSQL at DATABASE_URL; check the URL and that the server is up")?;
            Ok(Arc::new(db))
        }
        Some(u) if u.starts_with("sqlite:") => {
            let db = SqliteDb::connect_url(u)
                .await
                .with_context(|| format!("cannot open SQLite database {u}"))?;
            Ok(Arc::new(db))
        }
        Some(u) => anyhow::bail!(
            "DATABASE_URL must start with postgres:// or sqlite: (got {:?})",
            u.split(':').next().unwrap_or("")
        ),
        None => {
            let path = data_dir.join("support-server.db");
            let db = SqliteDb::connect_file(&path)
                .await
                .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
            Ok(Arc::new(db))
        }
    }
}
