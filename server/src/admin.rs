//! The admin API over [`crate::retention`]: uploads in progress and expired
//! ones, reaping them, and running the retention policy on demand. Admin
//! tokens only; `support-server admin` does the same from the command line.

use crate::auth::{Caller, Role};
use crate::db::ImageRow;
use crate::error::{ApiError, ApiResult};
use crate::images::ImageView;
use crate::retention::OpsError;
use crate::AppState;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::RetentionOff => ApiError::conflict("retention_off", e.to_string()),
            OpsError::Db(e) => ApiError::internal(e),
        }
    }
}

/// An upload in progress as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminUpload {
    /// Upload (image) id.
    pub id: String,
    /// Ticket reference.
    pub ticket: String,
    /// Display name.
    pub name: String,
    /// `uploading` (or `expired` when an earlier reap was interrupted).
    pub status: String,
    /// Declared size in bytes (0 while a streaming client has not told it).
    pub size: i64,
    /// Bytes received.
    pub received: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, the last chunk or change.
    pub updated_at: String,
    /// RFC 3339: expires unless another chunk arrives first.
    pub expires_at: Option<String>,
    /// Whether the expiry has passed (the reaper removes it).
    pub expired: bool,
}

impl AdminUpload {
    /// The view of a row at `now`.
    pub fn from_row(r: &ImageRow, now: i64) -> AdminUpload {
        AdminUpload {
            id: r.id.clone(),
            ticket: r.ticket.clone(),
            name: r.name.clone(),
            status: r.status.clone(),
            size: r.size,
            received: r.received,
            created_at: crate::rfc3339(r.created_at),
            updated_at: crate::rfc3339(r.updated_at),
            expires_at: r.upload_expires_at.map(crate::rfc3339),
            expired: r.status == "expired" || r.upload_expires_at.is_some_and(|t| t < now),
        }
    }
}

/// Uploads.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminUploadList {
    /// Oldest first.
    pub uploads: Vec<AdminUpload>,
}

/// Filter of `GET /api/v1/admin/uploads`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadsQuery {
    /// Only uploads whose expiry passed. Default false (all in progress).
    pub expired: Option<bool>,
}

/// `dry_run` of the admin operations.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    /// Only report what would be removed. Default false.
    pub dry_run: Option<bool>,
}

/// What `POST /api/v1/admin/reap` removed (or would remove).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReapReport {
    /// Whether nothing was removed.
    pub dry_run: bool,
    /// The uploads.
    pub uploads: Vec<AdminUpload>,
    /// Bytes they had received.
    pub bytes: i64,
}

/// What `POST /api/v1/admin/retention` deleted (or would delete).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetentionReport {
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// The policy: images of tickets closed this many seconds ago go.
    pub closed_ticket_retention_secs: i64,
    /// The images.
    pub images: Vec<ImageView>,
}

/// `GET /api/v1/admin/uploads?expired=true` (admin)
#[utoipa::path(get, path = "/api/v1/admin/uploads", tag = "admin", params(UploadsQuery),
    responses((status = 200, body = AdminUploadList), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn uploads(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<UploadsQuery>,
) -> ApiResult<Json<AdminUploadList>> {
    caller.require(&[Role::Admin])?;
    let now = crate::now();
    let rows = st
        .db
        .list_uploads(q.expired.unwrap_or(false).then_some(now))
        .await?;
    Ok(Json(AdminUploadList {
        uploads: rows.iter().map(|r| AdminUpload::from_row(r, now)).collect(),
    }))
}

/// `POST /api/v1/admin/reap?dry_run=true` (admin): removes expired uploads,
/// rows and stored bytes.
#[utoipa::path(post, path = "/api/v1/admin/reap", tag = "admin", params(DryRun),
    responses((status = 200, body = ReapReport), (status = 401), (status = 403)),
    security(("bearer" = [])))]
pub async fn reap(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<DryRun>,
) -> ApiResult<Json<ReapReport>> {
    caller.require(&[Role::Admin])?;
    let now = crate::now();
    let dry_run = q.dry_run.unwrap_or(false);
    let rows = crate::retention::reap_expired_uploads(&st, now, dry_run).await?;
    Ok(Json(ReapReport {
        dry_run,
        bytes: rows.iter().map(|r| r.received).sum(),
        uploads: rows.iter().map(|r| AdminUpload::from_row(r, now)).collect(),
    }))
}

/// `POST /api/v1/admin/retention?dry_run=true` (admin): one pass of the
/// closed-ticket retention policy; 409 when no policy is configured.
#[utoipa::path(post, path = "/api/v1/admin/retention", tag = "admin", params(DryRun),
    responses((status = 200, body = RetentionReport), (status = 401), (status = 403),
        (status = 409, description = "retention is off")),
    security(("bearer" = [])))]
pub async fn retention(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<DryRun>,
) -> ApiResult<Json<RetentionReport>> {
    caller.require(&[Role::Admin])?;
    let dry_run = q.dry_run.unwrap_or(false);
    let rows = crate::retention::run_retention(&st, crate::now(), dry_run).await?;
    Ok(Json(RetentionReport {
        dry_run,
        closed_ticket_retention_secs: st.config.closed_ticket_retention.unwrap_or(0),
        images: rows.iter().map(ImageView::from_row).collect(),
    }))
}
