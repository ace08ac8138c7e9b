//! Workers of the database-backed job queue, and the reaper of abandoned
//! uploads.
//!
//! Any number of replicas run workers on one database. A worker claims one
//! job at a time (exactly once: see
//! [`Database::claim_job`](crate::db::Database::claim_job)), heartbeats its
//! lease while it runs, and finishes, retries with exponential backoff, or
//! fails it. A job whose worker died is taken over when its lease expires;
//! an ingest job's results are committed only under a lease still held, in
//! the transaction that ends the job, so it finishes exactly once.
//! Enqueuing wakes the workers of every replica (in-process, and through
//! PostgreSQL `LISTEN`/`NOTIFY` across processes); they also poll, so a
//! missed wake-up costs at most one poll interval.

use crate::db::{Job, Lease};
use crate::ingest::{IngestError, GROUPS_PER_PART};
use crate::AppState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often idle workers look for work without being woken.
const POLL: Duration = Duration::from_secs(1);
/// How often the reaper runs.
const REAP_EVERY: Duration = Duration::from_secs(60);

/// Backoff before attempt `attempts + 1`: 2, 4, 8... seconds, at most an hour.
pub fn backoff(attempts: i64) -> i64 {
    1i64 << attempts.clamp(1, 11).min(11)
}

/// Runs jobs until `stop` is cancelled (finishing the current one).
pub async fn worker(state: AppState, n: usize, stop: CancellationToken) {
    // The replica's instance in the owner tells which replica holds a lease.
    let owner = format!("{}-{n}", state.instance);
    tracing::debug!(%owner, "worker started");
    loop {
        if stop.is_cancelled() {
            return;
        }
        let job = match state
            .db
            .claim_job(&owner, crate::now(), state.config.job_lease)
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a job; retrying");
                None
            }
        };
        match job {
            Some(job) => run(&state, &owner, job).await,
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = state.wake.notified() => {},
                    _ = tokio::time::sleep(POLL) => {},
                }
            }
        }
    }
}

/// Outcome of one attempt.
pub enum Outcome {
    /// Done.
    Done,
    /// Try again later.
    Retry(String),
    /// Give up.
    Fail(String),
}

async fn run(state: &AppState, owner: &str, job: Job) {
    // Heartbeat while the job runs so the lease is not taken over.
    let hb_stop = CancellationToken::new();
    let hb = {
        let (state, owner, stop, id) = (state.clone(), owner.to_string(), hb_stop.clone(), job.id);
        let every = Duration::from_secs((state.config.job_lease / 3).max(1) as u64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {
                        match state.db.heartbeat(id, &owner, crate::now(), state.config.job_lease).await {
                            Ok(true) => {}
                            Ok(false) => { tracing::warn!(job = id, "lease lost"); return; }
                            Err(e) => tracing::warn!(job = id, error = %e, "heartbeat failed"),
                        }
                    }
                }
            }
        })
    };
    let outcome = if job.attempts > job.max_attempts {
        Outcome::Fail(format!("gave up after {} attempts", job.max_attempts))
    } else {
        match job.kind.as_str() {
            "ingest" => ingest(state, owner, &job).await,
            "webhook" => crate::webhooks::deliver(state, &job).await,
            other => Outcome::Fail(format!("unknown job kind {other}")),
        }
    };
    hb_stop.cancel();
    let _ = hb.await;
    let now = crate::now();
    let r = match outcome {
        Outcome::Done => state.db.finish_job(job.id, owner, now).await,
        Outcome::Retry(e) if job.attempts < job.max_attempts => {
            tracing::warn!(job = job.id, error = %e, attempt = job.attempts, "job failed, will retry");
            state
                .db
                .retry_job(job.id, owner, now + backoff(job.attempts), &e, now)
                .await
        }
        Outcome::Retry(e) | Outcome::Fail(e) => {
            tracing::warn!(job = job.id, error = %e, "job failed for good");
            if job.kind == "ingest" {
                if let Some(id) = &job.image_id {
                    fail_image(state, &job, owner, id, &e, "failed").await;
                }
            }
            state.db.fail_job(job.id, owner, &e, now).await
        }
    };
    if let Err(e) = r {
        tracing::warn!(job = job.id, error = %e, "cannot record the job's outcome");
    }
}

/// Marks the image failed and ends the job in `job_state`, atomically and
/// only while this worker still holds the lease; queues `image.failed`.
async fn fail_image(
    state: &AppState,
    job: &Job,
    owner: &str,
    id: &str,
    reason: &str,
    job_state: &str,
) {
    let lease = Lease {
        job_id: job.id,
        owner,
    };
    let then = match state.db.get_image(id).await {
        Ok(Some(img)) => crate::webhooks::deliveries(state, id, &img.ticket, "image.failed")
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(image = id, error = %e, "cannot list webhooks");
                Vec::new()
            }),
        _ => Vec::new(),
    };
    match state
        .db
        .fail_image(id, reason, crate::now(), &lease, job_state, &then)
        .await
    {
        Ok(true) => {
            state.metrics.image_finished(false);
            if !then.is_empty() {
                state.wake.notify_waiters();
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(image = id, error = %e, "cannot mark the image failed"),
    }
}

async fn ingest(state: &AppState, owner: &str, job: &Job) -> Outcome {
    let Some(id) = job.image_id.clone() else {
        return Outcome::Fail("ingest job without an image".into());
    };
    if state.config.test_ingest_delay > 0 {
        // Test hook (hidden option, off by default): a long job whose
        // replica can be killed mid-way.
        tokio::time::sleep(Duration::from_secs(state.config.test_ingest_delay as u64)).await;
    }
    let now = crate::now();
    match state
        .db
        .set_status(&id, &["queued", "analyzing"], "analyzing", None, now)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Outcome::Done, // deleted or already finished
        Err(e) => return Outcome::Retry(e.to_string()),
    }
    let store = state.store.clone();
    let id2 = id.clone();
    let started = std::time::Instant::now();
    let analysis = tokio::task::spawn_blocking(move || {
        // Chunks a completion interrupted after its commit left behind
        // (stores that keep chunks apart; a no-op otherwise).
        if let Err(e) = store.delete_upload(&id2) {
            tracing::warn!(image = %id2, error = %e, "cannot free the chunks of a completed upload");
        }
        let reader = store
            .open_image(&id2)
            .map_err(|e| IngestError::Temporary(format!("cannot open the stored image: {e}")))?;
        crate::ingest::analyze(reader)
    })
    .await;
    let analysis = match analysis {
        Ok(Ok(a)) => a,
        Ok(Err(IngestError::Permanent(reason))) => {
            tracing::info!(image = %id, %reason, "image rejected");
            fail_image(state, job, owner, &id, &reason, "done").await;
            return Outcome::Done;
        }
        Ok(Err(IngestError::Temporary(e))) => return Outcome::Retry(e),
        Err(e) => {
            // A panic in the analysis is a bug, but the image must not be
            // retried forever.
            let reason = format!("the analysis crashed: {e}");
            fail_image(state, job, owner, &id, &reason, "done").await;
            return Outcome::Done;
        }
    };
    let mut parts: Vec<(&str, i64, String)> = vec![
        ("check", 0, analysis.check),
        ("superblock", 0, analysis.superblock),
        ("findings", 0, analysis.findings),
        ("groups_count", 0, analysis.groups.len().to_string()),
    ];
    for (i, chunk) in analysis.groups.chunks(GROUPS_PER_PART as usize).enumerate() {
        match serde_json::to_string(chunk) {
            Ok(s) => parts.push(("groups", i as i64, s)),
            Err(e) => return Outcome::Retry(e.to_string()),
        }
    }
    let img = match state.db.get_image(&id).await {
        Ok(Some(img)) => img,
        Ok(None) => return Outcome::Done, // deleted meanwhile
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let then = match crate::webhooks::deliveries(state, &id, &img.ticket, "image.ready").await {
        Ok(t) => t,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let lease = Lease {
        job_id: job.id,
        owner,
    };
    match state
        .db
        .store_results(&id, &analysis.index, &parts, crate::now(), &lease, &then)
        .await
    {
        Ok(true) => {
            tracing::info!(image = %id, job = job.id, %owner, elapsed_ms = started.elapsed().as_millis() as u64, "image ready");
            state.metrics.image_finished(true);
            if !then.is_empty() {
                state.wake.notify_waiters();
            }
            Outcome::Done
        }
        // Deleted, finished meanwhile, or the lease was lost to another
        // replica, which finishes the job.
        Ok(false) => Outcome::Done,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// Removes expired uploads and sessions every minute until `stop`.
pub async fn reaper(state: AppState, stop: CancellationToken) {
    loop {
        reap_once(&state).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REAP_EVERY) => {}
        }
    }
}

/// One pass of the reaper (expired sessions, and expired uploads through
/// [`crate::retention::reap_expired_uploads`]); returns how many uploads it
/// removed.
pub async fn reap_once(state: &AppState) -> usize {
    let now = crate::now();
    let _ = state.db.delete_expired_sessions(now).await;
    match crate::retention::reap_expired_uploads(state, now, false).await {
        Ok(removed) => removed.len(),
        Err(e) => {
            tracing::warn!(error = %e, "reaper: cannot list expired uploads");
            0
        }
    }
}
