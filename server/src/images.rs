//! The images API: list and search, one image, analysis results, downloads
//! of the stored QCOW2 and of the raw view (HTTP ranges, streamed with
//! bounded memory), read-only browsing, triage and deletion.

use crate::auth::{Caller, Role};
use crate::db::{Bind, Filter, ImageRow, Triage};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Triage statuses a maintainer can set.
pub const TRIAGE_STATUSES: &[&str] = &["new", "investigating", "waiting", "resolved", "archived"];

/// Pipeline statuses.
pub const STATUSES: &[&str] = &["uploading", "queued", "analyzing", "ready", "failed"];

/// An image: upload, pipeline, index and triage fields.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageView {
    /// Image id (= upload id).
    pub id: String,
    /// Ticket reference.
    pub ticket: String,
    /// `uploading`, `queued`, `analyzing`, `ready` or `failed`.
    pub status: String,
    /// Why it failed (or the last temporary error while retrying).
    pub reason: Option<String>,
    /// Display name given at upload.
    pub name: String,
    /// Size of the stored QCOW2 in bytes.
    pub size: i64,
    /// SHA-256 of the stored QCOW2 (declared until verified at completion).
    pub sha256: Option<String>,
    /// Bytes received so far.
    pub received: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, when the upload was verified.
    pub completed_at: Option<String>,
    /// Size of the filesystem (the QCOW2 virtual size) in bytes.
    pub virtual_size: Option<i64>,
    /// Filesystem UUID.
    pub fs_uuid: Option<String>,
    /// Volume label.
    pub label: Option<String>,
    /// ext2, ext3 or ext4.
    pub fs_type: Option<String>,
    /// Feature names.
    pub features: Vec<String>,
    /// Block size in bytes.
    pub block_size: Option<i64>,
    /// Blocks.
    pub block_count: Option<i64>,
    /// Free blocks.
    pub free_blocks: Option<i64>,
    /// Inodes.
    pub inode_count: Option<i64>,
    /// Free inodes.
    pub free_inodes: Option<i64>,
    /// Block groups.
    pub group_count: Option<i64>,
    /// Filesystem state (`clean`, `not clean`, `with errors`...).
    pub state: Option<String>,
    /// Errors the kernel counted (`s_error_count`).
    pub error_count: Option<i64>,
    /// Kernel function of the first recorded error.
    pub first_error_function: Option<String>,
    /// Its source line.
    pub first_error_line: Option<i64>,
    /// Its time (RFC 3339).
    pub first_error_time: Option<String>,
    /// Kernel function of the last recorded error.
    pub last_error_function: Option<String>,
    /// Its source line.
    pub last_error_line: Option<i64>,
    /// Its time (RFC 3339).
    pub last_error_time: Option<String>,
    /// Journal state.
    pub journal_state: Option<String>,
    /// Findings of severity error.
    pub findings_errors: Option<i64>,
    /// Findings of severity warning.
    pub findings_warnings: Option<i64>,
    /// Triage status.
    pub triage_status: String,
    /// Who works on it.
    pub assignee: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Free-form notes.
    pub notes: String,
}

fn words(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

impl ImageView {
    /// The API view of a row.
    pub fn from_row(r: &ImageRow) -> ImageView {
        let ix = &r.index;
        ImageView {
            id: r.id.clone(),
            ticket: r.ticket.clone(),
            status: r.status.clone(),
            reason: r.reason.clone(),
            name: r.name.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
            received: r.received,
            created_at: crate::rfc3339(r.created_at),
            updated_at: crate::rfc3339(r.updated_at),
            completed_at: r.completed_at.map(crate::rfc3339),
            virtual_size: ix.virtual_size,
            fs_uuid: ix.fs_uuid.clone(),
            label: ix.label.clone(),
            fs_type: ix.fs_type.clone(),
            features: words(&ix.features),
            block_size: ix.block_size,
            block_count: ix.block_count,
            free_blocks: ix.free_blocks,
            inode_count: ix.inode_count,
            free_inodes: ix.free_inodes,
            group_count: ix.group_count,
            state: ix.state.clone(),
            error_count: ix.error_count,
            first_error_function: ix.first_error_function.clone(),
            first_error_line: ix.first_error_line,
            first_error_time: ix.first_error_time.map(crate::rfc3339),
            last_error_function: ix.last_error_function.clone(),
            last_error_line: ix.last_error_line,
            last_error_time: ix.last_error_time.map(crate::rfc3339),
            journal_state: ix.journal_state.clone(),
            findings_errors: ix.findings_errors,
            findings_warnings: ix.findings_warnings,
            triage_status: r.triage_status.clone(),
            assignee: r.assignee.clone(),
            tags: words(&Some(r.tags.clone())),
            notes: r.notes.clone(),
        }
    }
}

/// A page of images.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    /// The page.
    pub images: Vec<ImageView>,
    /// Images matching the filters in all pages.
    pub total: i64,
}

/// Filters, sorting and paging of `GET /api/v1/images`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Exact ticket.
    pub ticket: Option<String>,
    /// Pipeline status (`uploading`, `queued`, `analyzing`, `ready`, `failed`).
    pub status: Option<String>,
    /// Filesystem UUID (exact).
    pub fs_uuid: Option<String>,
    /// Label (exact).
    pub label: Option<String>,
    /// A feature the filesystem has (e.g. `metadata_csum`).
    pub feature: Option<String>,
    /// Kernel function of the first or last recorded error.
    pub error_function: Option<String>,
    /// Created at or after (RFC 3339 or Unix seconds).
    pub since: Option<String>,
    /// Created before (RFC 3339 or Unix seconds).
    pub until: Option<String>,
    /// Triage status.
    pub triage_status: Option<String>,
    /// Assignee (exact).
    pub assignee: Option<String>,
    /// A tag.
    pub tag: Option<String>,
    /// Only images with (true) or without (false) error findings or kernel errors.
    pub has_errors: Option<bool>,
    /// `created_at`, `updated_at`, `size`, `ticket`, `status`, `label`,
    /// `last_error_time`, `findings_errors`; `-` in front for descending.
    /// Default `-created_at`.
    pub sort: Option<String>,
    /// Images to skip. Default 0.
    pub offset: Option<i64>,
    /// Page size, 1-1000. Default 50.
    pub limit: Option<i64>,
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Builds the SQL filter of a listing for a caller (ticket systems see their
/// scope only).
pub fn build_filter(q: &ListQuery, caller: &Caller) -> ApiResult<Filter> {
    let mut conds: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    let push = |cond: &str, b: Bind, binds: &mut Vec<Bind>, conds: &mut Vec<String>| {
        binds.push(b);
        conds.push(cond.replace("$?", &format!("${}", binds.len())));
    };
    if caller.role == Role::TicketSystem {
        let scope = caller.ticket.clone().unwrap_or_default();
        if let Some(t) = &q.ticket {
            if !crate::auth::scope_matches(&scope, t) {
                return Err(ApiError::forbidden(format!(
                    "this token may not read ticket {t}"
                )));
            }
        }
        match scope.strip_suffix('*') {
            Some("") => {}
            Some(prefix) => push(
                "ticket LIKE $? ESCAPE '\\'",
                Bind::S(format!("{}%", escape_like(prefix))),
                &mut binds,
                &mut conds,
            ),
            None => push("ticket = $?", Bind::S(scope), &mut binds, &mut conds),
        }
    }
    let text = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
    if let Some(t) = text(&q.ticket) {
        push("ticket = $?", Bind::S(t), &mut binds, &mut conds);
    }
    if let Some(s) = text(&q.status) {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "bad_status",
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
        push("status = $?", Bind::S(s), &mut binds, &mut conds);
    }
    if let Some(s) = text(&q.fs_uuid) {
        push(
            "fs_uuid = $?",
            Bind::S(s.to_ascii_lowercase()),
            &mut binds,
            &mut conds,
        );
    }
    if let Some(s) = text(&q.label) {
        push("label = $?", Bind::S(s), &mut binds, &mut conds);
    }
    if let Some(s) = text(&q.feature) {
        push(
            "features LIKE $? ESCAPE '\\'",
            Bind::S(format!("% {} %", escape_like(&s))),
            &mut binds,
            &mut conds,
        );
    }
    if let Some(s) = text(&q.error_function) {
        binds.push(Bind::S(s));
        let n = binds.len();
        conds.push(format!(
            "(first_error_function = ${n} OR last_error_function = ${n})"
        ));
    }
    for (v, op) in [(&q.since, ">="), (&q.until, "<")] {
        if let Some(s) = text(v) {
            let t = crate::parse_time(&s).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_time",
                    "since/until take RFC 3339 times (2026-01-31T12:00:00Z) or Unix seconds",
                )
            })?;
            push(
                &format!("created_at {op} $?"),
                Bind::I(t),
                &mut binds,
                &mut conds,
            );
        }
    }
    if let Some(s) = text(&q.triage_status) {
        push("triage_status = $?", Bind::S(s), &mut binds, &mut conds);
    }
    if let Some(s) = text(&q.assignee) {
        push("assignee = $?", Bind::S(s), &mut binds, &mut conds);
    }
    if let Some(s) = text(&q.tag) {
        push(
            "tags LIKE $? ESCAPE '\\'",
            Bind::S(format!("% {} %", escape_like(&s))),
            &mut binds,
            &mut conds,
        );
    }
    match q.has_errors {
        Some(true) => {
            conds.push("(COALESCE(findings_errors, 0) > 0 OR COALESCE(error_count, 0) > 0)".into())
        }
        Some(false) => {
            conds.push("(COALESCE(findings_errors, 0) = 0 AND COALESCE(error_count, 0) = 0)".into())
        }
        None => {}
    }
    let sort = q.sort.clone().unwrap_or_else(|| "-created_at".into());
    let (desc, key) = match sort.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, sort.strip_prefix('+').unwrap_or(&sort)),
    };
    let column =
        match key {
            "created_at" | "updated_at" | "size" | "ticket" | "status" | "label"
            | "last_error_time" | "findings_errors" | "triage_status" => key,
            _ => return Err(ApiError::bad_request(
                "bad_sort",
                "sort by created_at, updated_at, size, ticket, status, label, last_error_time, \
                 findings_errors or triage_status, with `-` in front for descending",
            )),
        };
    let dir = if desc { "DESC" } else { "ASC" };
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(50);
    if offset < 0 || !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_paging",
            "offset must be >= 0 and limit between 1 and 1000",
        ));
    }
    Ok(Filter {
        where_sql: if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        },
        order_sql: format!("ORDER BY {column} {dir}, id {dir}"),
        binds,
        offset,
        limit,
    })
}

/// An image the caller may read: 403 for roles that read nothing, 404 when
/// absent or in another ticket.
pub async fn load_for_read(st: &AppState, caller: &Caller, id: &str) -> ApiResult<ImageRow> {
    caller.require(&[Role::Admin, Role::Maintainer, Role::TicketSystem])?;
    if !crate::storage::valid_id(id) {
        return Err(ApiError::not_found("image"));
    }
    st.db
        .get_image(id)
        .await?
        .filter(|i| caller.can_read_ticket(&i.ticket) && i.status != "aborted")
        .ok_or_else(|| ApiError::not_found("image"))
}

/// `GET /api/v1/images`
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(ListQuery),
    responses((status = 200, body = ImageList), (status = 400), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ImageList>> {
    caller.require(&[Role::Admin, Role::Maintainer, Role::TicketSystem])?;
    let filter = build_filter(&q, &caller)?;
    let (rows, total) = st.db.list_images(&filter).await?;
    Ok(Json(ImageList {
        images: rows.iter().map(ImageView::from_row).collect(),
        total,
    }))
}

/// `GET /api/v1/images/{id}`
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, body = ImageView), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ImageView>> {
    Ok(Json(ImageView::from_row(
        &load_for_read(&st, &caller, &id).await?,
    )))
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Triage changes (`PATCH /api/v1/images/{id}`); absent fields are left alone.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriagePatch {
    /// Triage status: new, investigating, waiting, resolved, archived.
    /// (The pipeline status cannot be changed.)
    pub status: Option<String>,
    /// Same as `status`.
    pub triage_status: Option<String>,
    /// Assignee; `null` clears.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Option<String>>,
    /// Replaces the tags (each 1-40 of `A-Z a-z 0-9 . _ : -`).
    pub tags: Option<Vec<String>>,
    /// Replaces the notes (at most 64 KiB).
    pub notes: Option<String>,
}

fn valid_tag(t: &str) -> bool {
    (1..=40).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `PATCH /api/v1/images/{id}` (admin, maintainer)
#[utoipa::path(patch, path = "/api/v1/images/{id}", tag = "images", request_body = TriagePatch,
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, body = ImageView), (status = 400), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn patch(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(p): Json<TriagePatch>,
) -> ApiResult<Json<ImageView>> {
    caller.require(&[Role::Admin, Role::Maintainer])?;
    load_for_read(&st, &caller, &id).await?;
    let status = p.triage_status.or(p.status);
    if let Some(s) = &status {
        if !TRIAGE_STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "bad_triage_status",
                format!("status must be one of {}", TRIAGE_STATUSES.join(", ")),
            ));
        }
    }
    if let Some(Some(a)) = &p.assignee {
        if a.chars().count() > 100 || a.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "bad_assignee",
                "assignee must be at most 100 characters without control characters",
            ));
        }
    }
    let tags = match &p.tags {
        None => None,
        Some(t) => {
            if t.len() > 32 || !t.iter().all(|x| valid_tag(x)) {
                return Err(ApiError::bad_request(
                    "bad_tags",
                    "at most 32 tags, each 1-40 characters of A-Z a-z 0-9 . _ : -",
                ));
            }
            let mut t = t.clone();
            t.sort();
            t.dedup();
            Some(format!(" {} ", t.join(" ")))
        }
    };
    if p.notes.as_ref().is_some_and(|n| n.len() > 65536) {
        return Err(ApiError::bad_request(
            "bad_notes",
            "notes are at most 64 KiB",
        ));
    }
    let t = Triage {
        triage_status: status,
        assignee: p.assignee.map(|a| a.filter(|s| !s.is_empty())),
        tags,
        notes: p.notes,
    };
    if !st.db.update_triage(&id, &t, crate::now()).await? {
        return Err(ApiError::not_found("image"));
    }
    get(State(st), caller, Path(id)).await
}

/// `DELETE /api/v1/images/{id}` (admin): removes bytes and rows.
#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images",
    params(("id" = String, Path, description = "image id")),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    load_for_read(&st, &caller, &id).await?;
    if !st.db.delete_image(&id).await? {
        return Err(ApiError::not_found("image"));
    }
    let store = st.store.clone();
    tokio::task::spawn_blocking(move || {
        store.delete_upload(&id)?;
        store.delete_image(&id)
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

fn json_text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn result(st: &AppState, img: &ImageRow, kind: &str) -> ApiResult<Response> {
    match st.db.get_result(&img.id, kind, 0).await? {
        Some(body) => Ok(json_text(body)),
        None => Err(ApiError::conflict(
            "not_analyzed",
            format!(
                "image {} has no {kind} result (status {}{})",
                img.id,
                img.status,
                img.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// `GET /api/v1/images/{id}/superblock`: the `superblock` object of
/// `support-agent inspect --json`.
#[utoipa::path(get, path = "/api/v1/images/{id}/superblock", tag = "results",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, body = Object), (status = 404), (status = 409, description = "not analysed")),
    security(("bearer" = [])))]
pub async fn superblock(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let img = load_for_read(&st, &caller, &id).await?;
    result(&st, &img, "superblock").await
}

/// `GET /api/v1/images/{id}/findings`: the `findings` array of
/// `support-agent inspect --json`.
#[utoipa::path(get, path = "/api/v1/images/{id}/findings", tag = "results",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, body = Vec<Object>), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn findings(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let img = load_for_read(&st, &caller, &id).await?;
    result(&st, &img, "findings").await
}

/// `GET /api/v1/images/{id}/check`: the structural QCOW2 check report.
#[utoipa::path(get, path = "/api/v1/images/{id}/check", tag = "results",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, body = Object), (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn check(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let img = load_for_read(&st, &caller, &id).await?;
    result(&st, &img, "check").await
}

/// Paging of groups.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GroupsQuery {
    /// First group. Default 0.
    pub offset: Option<u64>,
    /// Number of groups. Default: all.
    pub limit: Option<u64>,
}

/// `GET /api/v1/images/{id}/groups?offset=&limit=`: a slice of the `groups`
/// array of `support-agent inspect --json`; `X-Total-Count` gives the number
/// of groups.
#[utoipa::path(get, path = "/api/v1/images/{id}/groups", tag = "results",
    params(("id" = String, Path, description = "image id"), GroupsQuery),
    responses((status = 200, body = Vec<Object>, headers(("X-Total-Count" = u64, description = "groups in all"))),
        (status = 404), (status = 409)),
    security(("bearer" = [])))]
pub async fn groups(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<GroupsQuery>,
) -> ApiResult<Response> {
    let img = load_for_read(&st, &caller, &id).await?;
    let Some(count_text) = st.db.get_result(&id, "groups_count", 0).await? else {
        return result(&st, &img, "groups").await;
    };
    let total: u64 = count_text.trim().parse().unwrap_or(0);
    let offset = q.offset.unwrap_or(0).min(total);
    let end = match q.limit {
        Some(l) => offset.saturating_add(l).min(total),
        None => total,
    };
    let per = crate::ingest::GROUPS_PER_PART;
    let mut out = String::from("[");
    if end > offset {
        let first = offset / per;
        let last = (end - 1) / per;
        let parts = st
            .db
            .get_result_parts(&id, "groups", first as i64, last as i64)
            .await?;
        let mut n = 0usize;
        for (part, body) in parts {
            let items: Vec<Box<serde_json::value::RawValue>> =
                serde_json::from_str(&body).map_err(ApiError::internal)?;
            let base = part as u64 * per;
            for (i, item) in items.iter().enumerate() {
                let g = base + i as u64;
                if g >= offset && g < end {
                    if n > 0 {
                        out.push(',');
                    }
                    out.push_str(item.get());
                    n += 1;
                }
            }
        }
    }
    out.push(']');
    let mut resp = json_text(out);
    resp.headers_mut()
        .insert("x-total-count", HeaderValue::from(total));
    Ok(resp)
}

/// Parses a single `Range: bytes=...` against `size`: `Ok(None)` serves
/// everything (no header, or one this server ignores such as several
/// ranges); `Err` is 416.
pub fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        return Ok(Some((size - n.min(size), size)));
    }
    let start: u64 = a.parse().map_err(|_| ())?;
    if start >= size {
        return Err(());
    }
    let end = if b.is_empty() {
        size
    } else {
        let last: u64 = b.parse().map_err(|_| ())?;
        if last < start {
            return Err(());
        }
        last.saturating_add(1).min(size)
    };
    Ok(Some((start, end)))
}

/// Bytes per read while streaming downloads (memory per download is a few
/// of these).
const STREAM_PIECE: usize = 1 << 20;

/// Streams `[start, end)` produced by `read` (on a blocking thread) as a
/// response body; memory stays at a few pieces whatever the size.
fn stream<F>(read: F, start: u64, end: u64) -> Body
where
    F: Fn(&mut [u8], u64) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(STREAM_PIECE as u64) as usize;
            let mut buf = vec![0u8; n];
            let r = read(&mut buf, pos).map(|_| Bytes::from(buf));
            let failed = r.is_err();
            if let Err(e) = &r {
                tracing::warn!(error = %e, offset = pos, "download stopped by a read error");
            }
            if tx.blocking_send(r).is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn ranged<F>(
    headers: &HeaderMap,
    size: u64,
    filename: &str,
    etag: Option<&str>,
    read: F,
) -> Response
where
    F: Fn(&mut [u8], u64) -> std::io::Result<()> + Send + 'static,
{
    let range = match parse_range(headers.get(header::RANGE), size) {
        Ok(r) => r,
        Err(()) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response()
        }
    };
    let (status, start, end) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        None => (StatusCode::OK, 0, size),
    };
    let mut resp = Response::new(stream(read, start, end));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(Ok(v)) = etag.map(|e| HeaderValue::from_str(&format!("\"{e}\""))) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

fn require_stored(img: &ImageRow) -> ApiResult<()> {
    if img.status == "uploading" {
        Err(ApiError::conflict(
            "not_uploaded",
            "the image is still being uploaded",
        ))
    } else {
        Ok(())
    }
}

/// `GET /api/v1/images/{id}/qcow2`: the stored bytes (Range supported).
#[utoipa::path(get, path = "/api/v1/images/{id}/qcow2", tag = "downloads",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404),
        (status = 416)),
    security(("bearer" = [])))]
pub async fn qcow2(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let img = load_for_read(&st, &caller, &id).await?;
    require_stored(&img)?;
    let store = st.store.clone();
    let id2 = id.clone();
    let reader = tokio::task::spawn_blocking(move || store.open_image(&id2)).await??;
    let size = reader.size()?;
    let name = format!("{}-{}.qcow2", img.ticket, img.id);
    Ok(ranged(
        &headers,
        size,
        &name,
        img.sha256.as_deref(),
        move |buf, off| reader.read_exact_at(buf, off),
    ))
}

/// `GET /api/v1/images/{id}/raw`: the filesystem as raw bytes, converted on
/// the fly by the QCOW2 reader (Range supported; nothing stored).
#[utoipa::path(get, path = "/api/v1/images/{id}/raw", tag = "downloads",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404),
        (status = 409, description = "not a readable QCOW2"), (status = 416)),
    security(("bearer" = [])))]
pub async fn raw(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let img = load_for_read(&st, &caller, &id).await?;
    require_stored(&img)?;
    let store = st.store.clone();
    let id2 = id.clone();
    let view = tokio::task::spawn_blocking(move || -> ApiResult<crate::ingest::RawView> {
        let reader = store.open_image(&id2)?;
        crate::ingest::RawView::open(reader).map_err(|e| {
            ApiError::conflict(
                "not_qcow2",
                format!("the stored image cannot be read as QCOW2: {e}"),
            )
        })
    })
    .await??;
    let view = Arc::new(view);
    let size = view.size();
    let name = format!("{}-{}.raw", img.ticket, img.id);
    Ok(ranged(&headers, size, &name, None, move |buf, off| {
        view.read_at(buf, off)
    }))
}

async fn browse(
    st: &AppState,
    caller: &Caller,
    id: &str,
    ino: &str,
    what: crate::ingest::Browse,
) -> ApiResult<Json<serde_json::Value>> {
    let img = load_for_read(st, caller, id).await?;
    require_stored(&img)?;
    let ino: u64 = ino
        .parse()
        .ok()
        .filter(|n| *n >= 1 && *n <= u32::MAX as u64)
        .ok_or_else(|| ApiError::bad_request("bad_inode", "an inode number is 1-4294967295"))?;
    let store = st.store.clone();
    let id2 = id.to_string();
    let v = tokio::task::spawn_blocking(move || {
        let reader = store.open_image(&id2)?;
        crate::ingest::browse(reader, ino, what)
    })
    .await??;
    Ok(Json(v))
}

/// `GET /api/v1/images/{id}/inodes/{ino}`: one inode, as `debugfs stat` shows it.
#[utoipa::path(get, path = "/api/v1/images/{id}/inodes/{ino}", tag = "browse",
    params(("id" = String, Path, description = "image id"), ("ino" = u64, Path, description = "inode number")),
    responses((status = 200, body = Object), (status = 400), (status = 404)),
    security(("bearer" = [])))]
pub async fn inode(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, ino)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    browse(&st, &caller, &id, &ino, crate::ingest::Browse::Inode).await
}

/// `GET /api/v1/images/{id}/dirs/{ino}`: a directory's entries (inode, type, name).
#[utoipa::path(get, path = "/api/v1/images/{id}/dirs/{ino}", tag = "browse",
    params(("id" = String, Path, description = "image id"), ("ino" = u64, Path, description = "directory inode number")),
    responses((status = 200, body = Object), (status = 400), (status = 404)),
    security(("bearer" = [])))]
pub async fn dir(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, ino)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    browse(&st, &caller, &id, &ino, crate::ingest::Browse::Dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some(&h("bytes=0-3")), 10), Ok(Some((0, 4))));
        assert_eq!(parse_range(Some(&h("bytes=5-")), 10), Ok(Some((5, 10))));
        assert_eq!(parse_range(Some(&h("bytes=-3")), 10), Ok(Some((7, 10))));
        assert_eq!(parse_range(Some(&h("bytes=-30")), 10), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some(&h("bytes=8-100")), 10), Ok(Some((8, 10))));
        assert_eq!(parse_range(Some(&h("bytes=10-")), 10), Err(()));
        assert_eq!(parse_range(Some(&h("bytes=4-2")), 10), Err(()));
        assert_eq!(parse_range(Some(&h("bytes=0-1,4-5")), 10), Ok(None));
    }
}
