//! The upload protocol (see `docs/upload-protocol.md`): an upload is created
//! for a ticket with its size; chunks are `PUT` at byte offsets with their
//! SHA-256, in any order, concurrently, again; `GET` lists the ranges held;
//! `complete` verifies the whole size and SHA-256 and queues the image.
//!
//! Durability: a chunk is acknowledged only after its bytes are written and
//! `fdatasync`ed and its row is committed, so a crash loses no acknowledged
//! chunk. Overlapping chunks are compared byte for byte with what is held.

use crate::auth::{Caller, Role};
use crate::db::{
    ChunkRow, Database, ImageRow, NewImage, NewJob, NewRangeLock, RangeLock, LOCK_CHUNK, LOCK_CLOSE,
};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// Header carrying a chunk's SHA-256 (64 hex digits).
pub const CHUNK_SHA256_HEADER: &str = "x-chunk-sha256";

/// What the server accepts, advertised to clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Largest chunk in bytes.
    pub max_chunk_size: u64,
    /// Largest image in bytes.
    pub max_image_size: u64,
    /// Bytes all images of one ticket may use together.
    pub ticket_quota: u64,
    /// Parallel chunk requests the server suggests.
    pub concurrency: u32,
    /// Checksum algorithm of chunks and images.
    pub hash: String,
    /// An upload with no new chunk for this many seconds expires.
    pub upload_ttl_seconds: i64,
}

/// A byte range `[offset, offset + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// Request to create an upload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    /// Ticket reference; an uploader token's own ticket when omitted.
    pub ticket: Option<String>,
    /// Exact size of the image in bytes; may be omitted by streaming
    /// clients, which then give it at completion (chunks are bounded by
    /// `max_image_size` meanwhile).
    #[serde(default)]
    pub size: Option<u64>,
    /// SHA-256 of the whole image (hex), if known now; else give it at
    /// completion.
    pub sha256: Option<String>,
    /// Display name (e.g. the source file name); informational.
    pub name: Option<String>,
}

/// State of an upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UploadView {
    /// Upload id, which is also the image id.
    pub id: String,
    /// Ticket.
    pub ticket: String,
    /// `uploading` until completed, then the image's status.
    pub status: String,
    /// Declared size.
    pub size: u64,
    /// Declared (or, once complete, verified) SHA-256.
    pub sha256: Option<String>,
    /// Bytes held.
    pub received: u64,
    /// Ranges held, merged and sorted.
    pub ranges: Vec<ByteRange>,
    /// Ranges still missing.
    pub missing: Vec<ByteRange>,
    /// When the upload expires unless more chunks arrive (RFC 3339).
    pub expires_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Limits in force.
    pub limits: Limits,
    /// Where to `PUT` chunks: replace `{offset}`.
    pub chunk_url: String,
    /// Where to `POST` completion.
    pub complete_url: String,
    /// The image this upload becomes.
    pub image_url: String,
}

/// Answer to a chunk.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChunkAck {
    /// Offset of the chunk.
    pub offset: u64,
    /// Its length.
    pub length: u64,
    /// False when the server already held exactly these bytes.
    pub stored: bool,
    /// Bytes of the upload held now (approximate under concurrency).
    pub received: u64,
}

/// Request to complete an upload.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteUpload {
    /// SHA-256 of the whole image; required unless given at creation or a
    /// manifest (`chunks`) is given.
    pub sha256: Option<String>,
    /// Size of the image; required when it was not given at creation, else
    /// must equal it.
    pub size: Option<u64>,
    /// Manifest of a streaming client, which cannot hash the whole image
    /// (its first bytes are produced last): chunks tiling `[0, size)` in
    /// order; each is verified against the stored bytes in the same pass
    /// that computes the whole SHA-256 (returned in the image object).
    pub chunks: Option<Vec<ManifestChunk>>,
}

/// One chunk of a completion manifest.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestChunk {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
    /// SHA-256 of these bytes, 64 hex digits.
    pub sha256: String,
}

/// Checks that a manifest tiles `[0, size)` in order; returns the chunks
/// with parsed digests.
fn parse_manifest(chunks: &[ManifestChunk], size: u64) -> ApiResult<Vec<(u64, u64, String)>> {
    let bad = |m: String| ApiError::bad_request("bad_manifest", m);
    let mut pos = 0u64;
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        if c.offset != pos || c.length == 0 {
            return Err(bad(format!(
                "manifest chunks must tile [0, size) in order: expected a non-empty chunk at {pos}, got [{}, +{})",
                c.offset, c.length
            )));
        }
        let sha = parse_sha256(&c.sha256).ok_or_else(|| {
            bad(format!(
                "the SHA-256 of the chunk at {} is not 64 hex digits",
                c.offset
            ))
        })?;
        pos = pos
            .checked_add(c.length)
            .filter(|p| *p <= size)
            .ok_or_else(|| {
                bad(format!(
                    "the manifest goes past the image size of {size} bytes"
                ))
            })?;
        out.push((c.offset, c.length, sha));
    }
    if pos != size {
        return Err(bad(format!("the manifest covers {pos} of {size} bytes")));
    }
    Ok(out)
}

/// Hashes an upload's bytes as they stream past in order: the whole
/// SHA-256, and for a streaming client's manifest the offsets of chunks
/// whose bytes hash to something else, in the same pass.
struct Verifier {
    whole: Sha256,
    manifest: Vec<(u64, u64, String)>,
    /// Index of the manifest chunk being hashed, and its bytes still due.
    at: usize,
    due: u64,
    part: Sha256,
    bad: Vec<u64>,
}

impl Verifier {
    fn new(manifest: Vec<(u64, u64, String)>) -> Verifier {
        let due = manifest.first().map(|c| c.1).unwrap_or(0);
        Verifier {
            whole: Sha256::new(),
            manifest,
            at: 0,
            due,
            part: Sha256::new(),
            bad: Vec::new(),
        }
    }

    fn update(&mut self, mut b: &[u8]) {
        self.whole.update(b);
        while !b.is_empty() && self.at < self.manifest.len() {
            let n = self.due.min(b.len() as u64) as usize;
            self.part.update(&b[..n]);
            self.due -= n as u64;
            b = &b[n..];
            if self.due == 0 {
                let done = std::mem::take(&mut self.part);
                if let Some((offset, _, sha)) = self.manifest.get(self.at) {
                    if hex::encode(done.finalize()) != *sha {
                        self.bad.push(*offset);
                    }
                }
                self.at += 1;
                self.due = self.manifest.get(self.at).map(|c| c.1).unwrap_or(0);
            }
        }
    }

    /// The whole SHA-256 (hex) and the offsets of mismatching chunks.
    fn finish(self) -> (String, Vec<u64>) {
        (hex::encode(self.whole.finalize()), self.bad)
    }
}

/// A lock on a byte range of an upload, kept in the database so every
/// replica respects it (two overlapping chunks are never compared and
/// written at the same time, nothing is written while a completion hashes
/// the whole image, whichever replicas the requests reach). Renewed while
/// held; released by [`RangeGuard::release`], or in the background when
/// the request is dropped; a lock of a replica that died expires after the
/// lease (`job_lease`).
pub struct RangeGuard {
    db: Arc<dyn Database>,
    id: i64,
    renew: CancellationToken,
    released: bool,
}

impl RangeGuard {
    /// Releases the lock now.
    pub async fn release(mut self) {
        self.released = true;
        self.renew.cancel();
        if let Err(e) = self.db.unlock_upload_range(self.id).await {
            tracing::warn!(lock = self.id, error = %e, "cannot release an upload lock; it expires with its lease");
        }
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.renew.cancel();
        let (db, id) = (self.db.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = db.unlock_upload_range(id).await;
            });
        }
    }
}

/// What [`lock_range`] found.
pub enum Acquired {
    /// The range is held.
    Held(RangeGuard),
    /// A completion or abort holds the upload (only for [`LOCK_CLOSE`]
    /// requests; chunks wait for it instead).
    Closing,
    /// The upload is gone or no longer `uploading`.
    Closed,
}

/// Longest pause between two attempts to take a busy range.
const LOCK_POLL_MAX: Duration = Duration::from_millis(50);

/// Takes `[start, end)` of upload `id` as `kind`, waiting while other
/// locks overlap it. A [`LOCK_CLOSE`] request does not wait for another
/// close (a second completion is refused, not queued).
pub async fn lock_range(
    st: &AppState,
    id: &str,
    start: u64,
    end: u64,
    kind: &'static str,
) -> ApiResult<Acquired> {
    let lease = st.config.job_lease.max(1);
    let mut pause = Duration::from_millis(2);
    loop {
        let now = crate::now();
        let r = st
            .db
            .lock_upload_range(&NewRangeLock {
                upload_id: id,
                start: start as i64,
                end: end.min(i64::MAX as u64) as i64,
                kind,
                owner: &st.instance,
                now,
                expires_at: now + lease,
            })
            .await?;
        match r {
            RangeLock::Taken(lock) => {
                let renew = CancellationToken::new();
                let (db, stop) = (st.db.clone(), renew.clone());
                let every = Duration::from_secs((lease / 3).max(1) as u64);
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(every) => {
                                if let Ok(false) = db.renew_upload_lock(lock, crate::now() + lease).await {
                                    return;
                                }
                            }
                        }
                    }
                });
                return Ok(Acquired::Held(RangeGuard {
                    db: st.db.clone(),
                    id: lock,
                    renew,
                    released: false,
                }));
            }
            RangeLock::Closed => return Ok(Acquired::Closed),
            RangeLock::Busy { closing: true } if kind == LOCK_CLOSE => {
                return Ok(Acquired::Closing)
            }
            RangeLock::Busy { .. } => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LOCK_POLL_MAX);
            }
        }
    }
}

fn closing_conflict() -> ApiError {
    ApiError::conflict(
        "completing",
        "this upload is being completed by another request",
    )
}

/// Merges ranges (sorted or not) into sorted, disjoint, non-adjacent ones.
pub fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The parts of `[0, size)` not covered by merged `held`.
pub fn gaps(held: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(s, e) in held {
        if s > pos {
            out.push((pos, s.min(size)));
        }
        pos = pos.max(e);
    }
    if pos < size {
        out.push((pos, size));
    }
    out
}

fn to_ranges(r: &[(u64, u64)]) -> Vec<ByteRange> {
    r.iter()
        .map(|&(s, e)| ByteRange {
            offset: s,
            length: e - s,
        })
        .collect()
}

fn chunk_ranges(chunks: &[ChunkRow]) -> Vec<(u64, u64)> {
    merge(
        chunks
            .iter()
            .map(|c| (c.offset as u64, (c.offset + c.length) as u64))
            .collect(),
    )
}

/// Parses a SHA-256 given as 64 hex digits (either case) to lowercase.
pub fn parse_sha256(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn limits_of(st: &AppState) -> Limits {
    let c = &st.config;
    Limits {
        max_chunk_size: c.max_chunk_size,
        max_image_size: c.max_image_size,
        ticket_quota: c.ticket_quota,
        concurrency: c.upload_concurrency,
        hash: "sha256".into(),
        upload_ttl_seconds: c.upload_ttl,
    }
}

async fn view(st: &AppState, img: &ImageRow) -> ApiResult<UploadView> {
    let size = img.size as u64;
    let held = if img.status == "uploading" {
        chunk_ranges(&st.db.all_chunks(&img.id).await?)
    } else {
        vec![(0, size)]
    };
    let received = held.iter().map(|(s, e)| e - s).sum();
    let id = &img.id;
    Ok(UploadView {
        id: id.clone(),
        ticket: img.ticket.clone(),
        status: img.status.clone(),
        size,
        sha256: img.sha256.clone(),
        received,
        // Unknown size (0): what is missing is known only at completion.
        missing: if size == 0 {
            Vec::new()
        } else {
            to_ranges(&gaps(&held, size))
        },
        ranges: to_ranges(&held),
        expires_at: img.upload_expires_at.map(crate::rfc3339),
        created_at: crate::rfc3339(img.created_at),
        limits: limits_of(st),
        chunk_url: format!("/api/v1/uploads/{id}/chunks/{{offset}}"),
        complete_url: format!("/api/v1/uploads/{id}/complete"),
        image_url: format!("/api/v1/images/{id}"),
    })
}

/// Loads an upload the caller may write to; 404 when absent or outside the
/// caller's tickets.
async fn load_for_write(st: &AppState, caller: &Caller, id: &str) -> ApiResult<ImageRow> {
    if !crate::storage::valid_id(id) {
        return Err(ApiError::not_found("upload"));
    }
    let img = st
        .db
        .get_image(id)
        .await?
        .filter(|i| caller.can_write_ticket(&i.ticket))
        .ok_or_else(|| ApiError::not_found("upload"))?;
    Ok(img)
}

fn require_uploading(img: &ImageRow) -> ApiResult<()> {
    if img.status == "uploading" {
        Ok(())
    } else {
        Err(ApiError::conflict(
            "upload_closed",
            format!(
                "upload {} is already complete (image status {}); nothing more can be sent",
                img.id, img.status
            ),
        ))
    }
}

/// `GET /api/v1/uploads/limits`
#[utoipa::path(get, path = "/api/v1/uploads/limits", tag = "uploads",
    responses((status = 200, body = Limits)), security(("bearer" = [])))]
pub async fn limits_handler(State(st): State<AppState>, _caller: Caller) -> Json<Limits> {
    Json(limits_of(&st))
}

/// `POST /api/v1/uploads`
#[utoipa::path(post, path = "/api/v1/uploads", tag = "uploads", request_body = CreateUpload,
    responses((status = 201, body = UploadView), (status = 400), (status = 401), (status = 403),
        (status = 413, description = "image larger than allowed or ticket quota exceeded")),
    security(("bearer" = [])))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateUpload>,
) -> ApiResult<(StatusCode, Json<UploadView>)> {
    let ticket = match (&req.ticket, caller.role) {
        (Some(t), _) => t.clone(),
        (None, Role::Uploader) => caller.ticket.clone().unwrap_or_default(),
        (None, _) => {
            return Err(ApiError::bad_request(
                "ticket_required",
                "give the ticket the upload belongs to in `ticket`",
            ))
        }
    };
    if !crate::auth::valid_ticket(&ticket) {
        return Err(ApiError::bad_request(
            "bad_ticket",
            "a ticket reference is 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
        ));
    }
    if !caller.can_write_ticket(&ticket) {
        return Err(ApiError::forbidden(format!(
            "this token may not upload into ticket {ticket}"
        )));
    }
    // 0 stands for "not known yet" (streaming clients); see `complete`.
    let req_size = req.size.unwrap_or(0);
    if req.size == Some(0) {
        return Err(ApiError::bad_request(
            "bad_size",
            "an image cannot be empty",
        ));
    }
    if req_size > st.config.max_image_size || req_size > i64::MAX as u64 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            format!(
                "the image is {} bytes; this server accepts at most {} bytes",
                req_size, st.config.max_image_size
            ),
        ));
    }
    let sha256 = match &req.sha256 {
        None => None,
        Some(s) => Some(parse_sha256(s).ok_or_else(|| {
            ApiError::bad_request("bad_sha256", "sha256 must be 64 hexadecimal digits")
        })?),
    };
    let name = req.name.clone().unwrap_or_default();
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_name",
            "name must be at most 255 characters without control characters",
        ));
    }
    let id = crate::new_id();
    let now = crate::now();
    let store = st.store.clone();
    let (id2, size) = (id.clone(), req_size);
    tokio::task::spawn_blocking(move || store.create_upload(&id2, size)).await??;
    let new = NewImage {
        id: id.clone(),
        ticket: ticket.clone(),
        name,
        size: req_size as i64,
        sha256,
        now,
        upload_expires_at: now + st.config.upload_ttl,
        uploaded_by: caller.token_id,
    };
    let quota = i64::try_from(st.config.ticket_quota).unwrap_or(i64::MAX);
    let created = st.db.create_upload(&new, quota).await;
    if !matches!(created, Ok(true)) {
        let store = st.store.clone();
        let id2 = id.clone();
        let _ = tokio::task::spawn_blocking(move || store.delete_upload(&id2)).await;
    }
    if !created? {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "quota_exceeded",
            format!(
                "ticket {ticket} would exceed its quota of {} bytes; ask an administrator to delete old images",
                st.config.ticket_quota
            ),
        ));
    }
    st.metrics.upload_created();
    tracing::info!(upload = %id, %ticket, size = req_size, "upload created");
    let img = st
        .db
        .get_image(&id)
        .await?
        .ok_or_else(|| ApiError::internal("upload vanished after creation"))?;
    Ok((StatusCode::CREATED, Json(view(&st, &img).await?)))
}

/// `GET /api/v1/uploads/{id}`
#[utoipa::path(get, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, description = "upload id")),
    responses((status = 200, body = UploadView), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadView>> {
    let img = load_for_write(&st, &caller, &id).await?;
    Ok(Json(view(&st, &img).await?))
}

/// `DELETE /api/v1/uploads/{id}`: abandons an upload in progress.
#[utoipa::path(delete, path = "/api/v1/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, description = "upload id")),
    responses((status = 204), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn abort(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let img = load_for_write(&st, &caller, &id).await?;
    require_uploading(&img)?;
    // Wait for chunks being written (on any replica) before removing.
    let lock = match lock_range(&st, &id, 0, u64::MAX, LOCK_CLOSE).await? {
        Acquired::Held(l) => l,
        Acquired::Closing => return Err(closing_conflict()),
        Acquired::Closed => {
            let img = load_for_write(&st, &caller, &id).await?;
            require_uploading(&img)?;
            return Ok(StatusCode::NO_CONTENT);
        }
    };
    let removed = st
        .db
        .set_status(&id, &["uploading"], "aborted", None, crate::now())
        .await;
    let r = match removed {
        Ok(true) => st.db.delete_image(&id).await.map(|_| true),
        other => other,
    };
    lock.release().await;
    if r? {
        let store = st.store.clone();
        tokio::task::spawn_blocking(move || {
            // Also whatever a completion that failed verification left.
            store.delete_upload(&id)?;
            store.delete_image(&id)
        })
        .await??;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/uploads/{id}/chunks/{offset}` with the bytes as body and
/// `X-Chunk-SHA256`.
#[utoipa::path(put, path = "/api/v1/uploads/{id}/chunks/{offset}", tag = "uploads",
    params(("id" = String, Path, description = "upload id"),
        ("offset" = u64, Path, description = "byte offset of the chunk in the image"),
        ("X-Chunk-SHA256" = String, Header, description = "SHA-256 of the body, 64 hex digits")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ChunkAck, description = "stored"),
        (status = 200, body = ChunkAck, description = "already held"),
        (status = 400), (status = 404), (status = 409, description = "overlaps different bytes, or upload closed"),
        (status = 413), (status = 416, description = "past the declared size"),
        (status = 422, description = "checksum mismatch; nothing stored")),
    security(("bearer" = [])))]
pub async fn put_chunk(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, offset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ChunkAck>)> {
    let img = load_for_write(&st, &caller, &id).await?;
    require_uploading(&img)?;
    let offset: u64 = offset.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_offset",
            "the chunk offset must be a decimal byte offset",
        )
    })?;
    let len = body.len() as u64;
    if len == 0 {
        return Err(ApiError::bad_request(
            "empty_chunk",
            "a chunk cannot be empty",
        ));
    }
    if len > st.config.max_chunk_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "chunk_too_large",
            format!("chunks are at most {} bytes", st.config.max_chunk_size),
        ));
    }
    // Unknown size (0): chunks are bounded by the largest image.
    let size = match img.size as u64 {
        0 => st.config.max_image_size,
        n => n,
    };
    let end = offset
        .checked_add(len)
        .filter(|e| *e <= size)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "past_end",
                format!(
                    "the chunk at offset {offset} of {len} bytes ends past the declared size of {size} bytes"
                ),
            )
        })?;
    let expected = headers
        .get(CHUNK_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_sha256)
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_checksum",
                "send the chunk's SHA-256 as 64 hex digits in the X-Chunk-SHA256 header",
            )
        })?;
    let b2 = body.clone();
    let actual = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&b2))).await?;
    if actual != expected {
        st.metrics.chunk_rejected();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_checksum",
            format!(
                "the chunk's SHA-256 is {actual} but X-Chunk-SHA256 says {expected}; nothing was stored, send it again"
            ),
        ));
    }

    // Completion locks the whole image; once it is done the upload is
    // closed and nothing may write into the stored image.
    let lock = match lock_range(&st, &id, offset, end, LOCK_CHUNK).await? {
        Acquired::Held(l) => l,
        Acquired::Closing | Acquired::Closed => {
            let img = load_for_write(&st, &caller, &id).await?;
            require_uploading(&img)?;
            return Err(ApiError::conflict(
                "upload_closed",
                "the upload was completed or removed meanwhile",
            ));
        }
    };
    // A task of its own: if the client goes away, the chunk is still
    // written and recorded (or refused) before the range is unlocked, so a
    // write still running can never land after another chunk's.
    let task = tokio::spawn(async move {
        let r = put_locked(&st, &caller, &id, offset, end, body, actual).await;
        lock.release().await;
        r
    });
    task.await?
}

/// The part of [`put_chunk`] that runs while the chunk's range is locked.
async fn put_locked(
    st: &AppState,
    caller: &Caller,
    id: &str,
    offset: u64,
    end: u64,
    body: Bytes,
    actual: String,
) -> ApiResult<(StatusCode, Json<ChunkAck>)> {
    let len = end - offset;
    let id = id.to_string();
    let img = load_for_write(st, caller, &id).await?;
    require_uploading(&img)?;
    let existing = st
        .db
        .chunks_overlapping(&id, offset as i64, end as i64)
        .await?;
    let ack = |stored: bool, received: i64| ChunkAck {
        offset,
        length: len,
        stored,
        received: received.max(0) as u64,
    };
    if existing
        .iter()
        .any(|c| c.offset as u64 == offset && c.length as u64 == len && c.sha256 == actual)
    {
        return Ok((StatusCode::OK, Json(ack(false, img.received))));
    }
    let covered: u64 = merge(
        existing
            .iter()
            .map(|c| {
                let s = (c.offset as u64).max(offset);
                let e = ((c.offset + c.length) as u64).min(end);
                (s, e)
            })
            .collect(),
    )
    .iter()
    .map(|(s, e)| e - s)
    .sum();
    if !existing.is_empty() {
        // Overlap: the bytes held must equal the new ones.
        let store = st.store.clone();
        let (id2, body2, ex) = (id.clone(), body.clone(), existing.clone());
        let same = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            for c in &ex {
                let s = (c.offset as u64).max(offset);
                let e = ((c.offset + c.length) as u64).min(end);
                let mut held = vec![0u8; (e - s) as usize];
                store.read_chunk(&id2, &c.into(), s, &mut held)?;
                let from = (s - offset) as usize;
                if body2.get(from..from + held.len()) != Some(&held[..]) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await??;
        if !same {
            st.metrics.chunk_rejected();
            return Err(ApiError::conflict(
                "overlap_conflict",
                format!(
                    "the chunk [{offset}, {end}) overlaps bytes already received with different content; \
                     nothing was stored"
                ),
            ));
        }
        if covered == len {
            return Ok((StatusCode::OK, Json(ack(false, img.received))));
        }
    }
    let store = st.store.clone();
    let (id2, body2) = (id.clone(), body.clone());
    let chunk = crate::storage::Chunk {
        offset,
        length: len,
        sha256: actual.clone(),
    };
    tokio::task::spawn_blocking(move || store.write_chunk(&id2, &chunk, &body2)).await??;
    let new_bytes = (len - covered) as i64;
    let now = crate::now();
    st.db
        .add_chunk(
            &id,
            &ChunkRow {
                offset: offset as i64,
                length: len as i64,
                sha256: actual,
            },
            new_bytes,
            now,
            now + st.config.upload_ttl,
        )
        .await?;
    st.metrics.chunk_stored(len);
    Ok((
        StatusCode::CREATED,
        Json(ack(true, img.received + new_bytes)),
    ))
}

/// `POST /api/v1/uploads/{id}/complete`
#[utoipa::path(post, path = "/api/v1/uploads/{id}/complete", tag = "uploads",
    params(("id" = String, Path, description = "upload id")),
    request_body(content = CompleteUpload, description = "optional when the SHA-256 was declared at creation"),
    responses((status = 200, body = crate::images::ImageView, description = "verified; the image is queued for analysis"),
        (status = 400), (status = 404),
        (status = 409, description = "ranges missing (listed in details) or completion already running"),
        (status = 422, description = "the whole image's SHA-256 differs")),
    security(("bearer" = [])))]
pub async fn complete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<crate::images::ImageView>> {
    let img = load_for_write(&st, &caller, &id).await?;
    if img.status != "uploading" {
        // Idempotent: a client retrying a completion that succeeded.
        return Ok(Json(crate::images::ImageView::from_row(&img)));
    }
    let req: CompleteUpload = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteUpload::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("bad_json", format!("the completion body is not valid: {e}"))
        })?
    };
    let given = match &req.sha256 {
        None => None,
        Some(s) => Some(parse_sha256(s).ok_or_else(|| {
            ApiError::bad_request("bad_sha256", "sha256 must be 64 hexadecimal digits")
        })?),
    };
    // Size: declared at creation, or (streaming clients) given now.
    let declared = img.size as u64;
    let size = match (declared, req.size) {
        (0, None) => {
            return Err(ApiError::bad_request(
                "size_required",
                "give the image's size in `size` (it was not declared at creation)",
            ))
        }
        (0, Some(0)) => {
            return Err(ApiError::bad_request(
                "bad_size",
                "an image cannot be empty",
            ))
        }
        (0, Some(n)) if n > st.config.max_image_size || n > i64::MAX as u64 => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "image_too_large",
                format!(
                    "the image is {n} bytes; this server accepts at most {} bytes",
                    st.config.max_image_size
                ),
            ))
        }
        (0, Some(n)) => n,
        (d, Some(n)) if n != d => {
            return Err(ApiError::bad_request(
                "size_differs",
                "the size given at completion differs from the one declared at creation",
            ))
        }
        (d, _) => d,
    };
    let manifest = match &req.chunks {
        None => None,
        Some(c) => Some(parse_manifest(c, size)?),
    };
    let expected = match (given, img.sha256.clone()) {
        (Some(g), Some(d)) if g != d => {
            return Err(ApiError::bad_request(
                "sha256_differs",
                "the sha256 given at completion differs from the one declared at creation",
            ))
        }
        (Some(g), _) => Some(g),
        (None, Some(d)) => Some(d),
        (None, None) if manifest.is_some() => None,
        (None, None) => {
            return Err(ApiError::bad_request(
                "sha256_required",
                "give the whole image's SHA-256 in `sha256`, or a manifest in `chunks` (it was not declared at creation)",
            ))
        }
    };
    // No chunk is being written while the whole image is hashed (with an
    // unknown size, chunks may land anywhere below max_image_size).
    let whole = size.max(if declared == 0 {
        st.config.max_image_size
    } else {
        0
    });
    let lock = match lock_range(&st, &id, 0, whole, LOCK_CLOSE).await? {
        Acquired::Held(l) => l,
        Acquired::Closing => return Err(closing_conflict()),
        Acquired::Closed => {
            // Completed by a concurrent request (idempotent), or removed.
            let img = load_for_write(&st, &caller, &id).await?;
            return Ok(Json(crate::images::ImageView::from_row(&img)));
        }
    };
    // A task of its own, like a chunk's: a completion runs to its end
    // (a retry then finds it done) even if the client goes away.
    let task = {
        let (st, img) = (st.clone(), img.clone());
        tokio::spawn(async move {
            let r = complete_locked(&st, &img, size, declared, manifest, expected).await;
            lock.release().await;
            r
        })
    };
    task.await??;
    let img = st
        .db
        .get_image(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("image"))?;
    Ok(Json(crate::images::ImageView::from_row(&img)))
}

/// The part of [`complete`] that runs while the whole upload is locked.
async fn complete_locked(
    st: &AppState,
    img: &ImageRow,
    size: u64,
    declared: u64,
    manifest: Option<Vec<(u64, u64, String)>>,
    expected: Option<String>,
) -> ApiResult<()> {
    let id = img.id.clone();
    let rows = st.db.all_chunks(&id).await?;
    let held = chunk_ranges(&rows);
    let missing = gaps(&held, size);
    if !missing.is_empty() {
        let n: u64 = missing.iter().map(|(s, e)| e - s).sum();
        return Err(ApiError::conflict(
            "incomplete",
            format!(
                "{n} bytes in {} ranges are still missing; send them and complete again",
                missing.len()
            ),
        )
        .with_details(serde_json::json!({ "missing": to_ranges(&missing) })));
    }
    if held.last().is_some_and(|&(_, e)| e > size) {
        return Err(ApiError::bad_request(
            "size_mismatch",
            format!("bytes past the given size of {size} bytes were received; give the image's real size"),
        ));
    }
    if declared == 0 {
        let quota = i64::try_from(st.config.ticket_quota).unwrap_or(i64::MAX);
        if !st.db.set_upload_size(&id, size as i64, quota).await? {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                format!(
                    "ticket {} would exceed its quota of {} bytes; ask an administrator to delete old images",
                    img.ticket, st.config.ticket_quota
                ),
            ));
        }
    }
    // One pass: the store writes the image while the bytes are hashed.
    let store = st.store.clone();
    let id2 = id.clone();
    let chunks: Vec<crate::storage::Chunk> = rows.iter().map(Into::into).collect();
    let (actual, bad) = tokio::task::spawn_blocking(move || {
        let mut v = Verifier::new(manifest.unwrap_or_default());
        store.assemble(&id2, &chunks, size, &mut |b: &[u8]| v.update(b))?;
        Ok::<_, std::io::Error>(v.finish())
    })
    .await??;
    let refused = if !bad.is_empty() {
        Some(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "chunk_mismatch",
                format!(
                    "{} chunks of the manifest differ from the bytes received (first at offset {}); delete this upload and send the image again",
                    bad.len(),
                    bad[0]
                ),
            )
            .with_details(serde_json::json!({ "offsets": bad })),
        )
    } else {
        expected.filter(|e| *e != actual).map(|expected| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "checksum_mismatch",
                format!(
                    "the uploaded bytes hash to {actual}, not {expected}; delete this upload and send the image again"
                ),
            )
        })
    };
    if let Some(err) = refused {
        let store = st.store.clone();
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || store.discard_assembly(&id2)).await??;
        return Err(err);
    }
    let store = st.store.clone();
    let id2 = id.clone();
    tokio::task::spawn_blocking(move || store.finalize(&id2)).await??;
    let now = crate::now();
    let job = NewJob {
        kind: "ingest",
        image_id: Some(id.clone()),
        payload: "{}".into(),
        run_at: now,
        max_attempts: 5,
    };
    if !st.db.complete_upload(&id, &actual, now, &job).await? {
        return Err(ApiError::conflict(
            "upload_closed",
            "the upload was completed or removed meanwhile",
        ));
    }
    // Stores that keep chunks apart free them now that the image is the
    // record; a failure only leaves garbage behind, never loses the image.
    let store = st.store.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || store.delete_upload(&id2)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(upload = %id, error = %e, "cannot free the chunks of a completed upload")
        }
        Err(e) => {
            tracing::warn!(upload = %id, error = %e, "cannot free the chunks of a completed upload")
        }
    }
    st.metrics.upload_completed(size);
    st.wake.notify_waiters();
    tracing::info!(upload = %id, size, sha256 = %actual, "upload complete, queued for analysis");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_and_gaps() {
        let m = merge(vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 50)]);
        assert_eq!(m, vec![(0, 8), (10, 30), (40, 50)]);
        assert_eq!(gaps(&m, 60), vec![(8, 10), (30, 40), (50, 60)]);
        assert_eq!(gaps(&[], 7), vec![(0, 7)]);
        assert_eq!(gaps(&[(0, 7)], 7), vec![]);
    }

    #[test]
    fn verifier_checks_manifest_chunks_across_any_cuts() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
        let h = |b: &[u8]| hex::encode(Sha256::digest(b));
        let manifest = vec![
            (0, 300, h(&data[..300])),
            (300, 1, "0".repeat(64)),
            (301, 699, h(&data[301..])),
        ];
        for cut in [1usize, 7, 300, 301, 1000] {
            let mut v = Verifier::new(manifest.clone());
            for piece in data.chunks(cut) {
                v.update(piece);
            }
            let (whole, bad) = v.finish();
            assert_eq!(whole, h(&data));
            assert_eq!(bad, vec![300], "pieces of {cut}");
        }
        let mut v = Verifier::new(Vec::new());
        v.update(&data);
        assert_eq!(v.finish(), (h(&data), vec![]));
    }
}
