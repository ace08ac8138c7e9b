//! What is kept how long: uploads abandoned past their expiry, and the
//! images of tickets closed longer ago than the retention policy
//! (`closed_ticket_retention`, off by default).
//!
//! Both removals claim an image first with a status change (`uploading` ->
//! `expired`, `ready`/`failed` -> `deleting`), so of several servers or a
//! server and the `admin` CLI exactly one removes each image, and a chunk or
//! download arriving meanwhile finds it closed. Bytes go before the row: an
//! interrupted pass leaves a row in `expired`/`deleting` that the next pass
//! finishes, never stored bytes that no row refers to.
//!
//! The periodic retention pass runs in every process that runs jobs
//! (`--role worker` or `all`) but only one
//! per round does the work: the one that wins the round's claim in the
//! `maintenance` table ([`Database::claim_maintenance`]).
//!
//! [`Database::claim_maintenance`]: crate::db::Database::claim_maintenance

use crate::db::{DbError, ImageRow};
use crate::AppState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name of the retention task in the `maintenance` table.
pub const RETENTION_TASK: &str = "retention";
/// Images handled per query of a retention pass.
const BATCH: i64 = 500;
/// Longest time between two retention rounds.
const MAX_ROUND: i64 = 3600;

/// Why an operation could not run.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The database failed (temporary: try again).
    #[error("database error: {0}")]
    Db(#[from] DbError),
    /// No retention policy is configured.
    #[error(
        "the retention policy is off; set closed_ticket_retention \
         (--closed-ticket-retention or SUPPORT_CLOSED_TICKET_RETENTION), e.g. 90d"
    )]
    RetentionOff,
}

/// Removes one image's stored bytes (upload and image) on a blocking thread.
async fn delete_bytes(state: &AppState, id: &str) -> std::io::Result<()> {
    let store = state.store.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        store.delete_upload(&id)?;
        store.delete_image(&id)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Bytes, then row, of an image already claimed; false (logged) on failure,
/// which leaves it for the next pass.
async fn remove(state: &AppState, img: &ImageRow, what: &str) -> bool {
    if let Err(e) = delete_bytes(state, &img.id).await {
        tracing::warn!(image = %img.id, error = %e, "{what}: cannot delete the stored bytes; will retry");
        return false;
    }
    match state.db.delete_image(&img.id).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(image = %img.id, error = %e, "{what}: cannot delete the row; will retry");
            false
        }
    }
}

/// Uploads whose expiry passed before `now` (and leftovers of an
/// interrupted reap): listed with `dry_run`, else removed, rows and bytes.
/// Returns the uploads listed or removed.
pub async fn reap_expired_uploads(
    state: &AppState,
    now: i64,
    dry_run: bool,
) -> Result<Vec<ImageRow>, OpsError> {
    let rows = state.db.list_uploads(Some(now)).await?;
    if dry_run {
        return Ok(rows);
    }
    let mut removed = Vec::new();
    for img in rows {
        if img.status == "uploading"
            && !state
                .db
                .set_status(&img.id, &["uploading"], "expired", None, now)
                .await?
        {
            continue; // completed, aborted or claimed by someone else meanwhile
        }
        if remove(state, &img, "reaper").await {
            tracing::info!(upload = %img.id, ticket = %img.ticket, "expired upload removed");
            state.metrics.upload_expired();
            removed.push(img);
        }
    }
    Ok(removed)
}

/// One retention pass at `now`: the images of tickets closed at least the
/// configured retention ago (see
/// [`Database::retention_candidates`](crate::db::Database::retention_candidates)),
/// listed with `dry_run`, else deleted, rows and bytes.
pub async fn run_retention(
    state: &AppState,
    now: i64,
    dry_run: bool,
) -> Result<Vec<ImageRow>, OpsError> {
    let keep = state
        .config
        .closed_ticket_retention
        .ok_or(OpsError::RetentionOff)?;
    let cutoff = now.saturating_sub(keep);
    if dry_run {
        return Ok(state.db.retention_candidates(cutoff, BATCH).await?);
    }
    let mut deleted = Vec::new();
    loop {
        let batch = state.db.retention_candidates(cutoff, BATCH).await?;
        let full = batch.len() as i64 == BATCH;
        let mut progress = false;
        for img in batch {
            if img.status != "deleting"
                && !state
                    .db
                    .set_status(
                        &img.id,
                        &[img.status.as_str()],
                        "deleting",
                        Some("retention: the ticket was closed"),
                        now,
                    )
                    .await?
            {
                continue;
            }
            if remove(state, &img, "retention").await {
                tracing::info!(image = %img.id, ticket = %img.ticket, "retention: image of a closed ticket deleted");
                deleted.push(img);
                progress = true;
            }
        }
        if !full || !progress {
            return Ok(deleted);
        }
    }
}

/// Runs the retention policy every `min(retention, 1h)` until `stop`; one
/// server per round does the work. Returns at once when retention is off.
pub async fn retention_worker(state: AppState, stop: CancellationToken) {
    let Some(keep) = state.config.closed_ticket_retention else {
        return;
    };
    let every = keep.clamp(1, MAX_ROUND);
    let owner = crate::new_id();
    loop {
        let now = crate::now();
        match state
            .db
            .claim_maintenance(RETENTION_TASK, &owner, now, now + every)
            .await
        {
            Ok(true) => match run_retention(&state, now, false).await {
                Ok(v) if !v.is_empty() => {
                    tracing::info!(images = v.len(), "retention pass deleted images")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
            },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim the retention round"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every as u64)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{Database, SqliteDb};

    #[tokio::test]
    async fn one_claim_per_round() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::connect_file(&dir.path().join("t.db"))
            .await
            .unwrap();
        assert!(db.claim_maintenance("t", "a", 100, 160).await.unwrap());
        assert!(!db.claim_maintenance("t", "b", 100, 160).await.unwrap());
        assert!(!db.claim_maintenance("t", "b", 159, 219).await.unwrap());
        assert!(db.claim_maintenance("t", "b", 160, 220).await.unwrap());
        assert!(db.claim_maintenance("other", "a", 160, 220).await.unwrap());
    }

    #[tokio::test]
    async fn closing_keeps_the_first_time_and_reopening_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::connect_file(&dir.path().join("t.db"))
            .await
            .unwrap();
        assert_eq!(db.get_ticket("T-1").await.unwrap().closed_at, None);
        db.set_ticket_closed("T-1", Some(10), Some(1), 10)
            .await
            .unwrap();
        db.set_ticket_closed("T-1", Some(20), Some(2), 20)
            .await
            .unwrap();
        let t = db.get_ticket("T-1").await.unwrap();
        assert_eq!((t.closed_at, t.closed_by), (Some(10), Some(1)));
        db.set_ticket_closed("T-1", None, None, 30).await.unwrap();
        let t = db.get_ticket("T-1").await.unwrap();
        assert_eq!((t.closed_at, t.closed_by), (None, None));
        db.set_ticket_closed("T-1", Some(40), Some(3), 40)
            .await
            .unwrap();
        assert_eq!(db.get_ticket("T-1").await.unwrap().closed_at, Some(40));
    }
}
