//! The SQL behind [`Database`](super::Database), written once and expanded
//! for SQLite and PostgreSQL by a macro (the queries are the same text; only
//! pool types and the job claim differ).

use super::*;
use sqlx::Row;

const IMAGE_COLUMNS: &str = "id, ticket, status, reason, name, size, sha256, received, created_at, \
    updated_at, completed_at, upload_expires_at, virtual_size, fs_uuid, label, fs_type, features, \
    block_size, block_count, free_blocks, inode_count, free_inodes, group_count, state, error_count, \
    first_error_function, first_error_line, first_error_time, last_error_function, last_error_line, \
    last_error_time, journal_state, findings_errors, findings_warnings, triage_status, assignee, \
    tags, notes";

/// Claim for SQLite: one writer at a time makes the `UPDATE ... RETURNING`
/// atomic.
const CLAIM_SQLITE: &str = "UPDATE jobs SET state = 'running', lease_owner = $1, \
    lease_expires_at = $2, heartbeat_at = $3, attempts = attempts + 1, updated_at = $3 \
    WHERE id = (SELECT id FROM jobs WHERE (state = 'queued' AND run_at <= $3) \
       OR (state = 'running' AND lease_expires_at < $3) \
       ORDER BY priority, run_at, id LIMIT 1) \
    RETURNING id, kind, image_id, payload, attempts, max_attempts";

/// Claim for PostgreSQL: concurrent workers skip rows another one locked.
const CLAIM_POSTGRES: &str = "UPDATE jobs SET state = 'running', lease_owner = $1, \
    lease_expires_at = $2, heartbeat_at = $3, attempts = attempts + 1, updated_at = $3 \
    WHERE id = (SELECT id FROM jobs WHERE (state = 'queued' AND run_at <= $3) \
       OR (state = 'running' AND lease_expires_at < $3) \
       ORDER BY priority, run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
    RETURNING id, kind, image_id, payload, attempts, max_attempts";

/// PostgreSQL: serializes the lock decisions of one upload across replicas
/// (held until the deciding transaction commits). SQLite needs nothing: its
/// single writer runs the one deciding statement alone.
const LOCK_UPLOAD_ROW_POSTGRES: Option<&str> =
    Some("SELECT id FROM images WHERE id = $1 FOR UPDATE");

/// Takes an upload lock unless a live one overlaps (one statement; see
/// `LOCK_UPLOAD_ROW_POSTGRES` for why it is atomic on both backends).
const TAKE_UPLOAD_LOCK: &str = "INSERT INTO upload_locks \
    (upload_id, range_start, range_end, kind, owner, expires_at) \
    SELECT $1, $2, $3, $4, $5, $7 \
    WHERE EXISTS (SELECT 1 FROM images WHERE id = $1 AND status = 'uploading') \
      AND NOT EXISTS (SELECT 1 FROM upload_locks WHERE upload_id = $1 \
        AND range_start < $3 AND range_end > $2 AND expires_at >= $6) \
    RETURNING id";

/// PostgreSQL channel on which enqueued jobs are announced to the workers
/// of every replica.
const JOBS_CHANNEL: &str = "support_jobs";

/// Announces a job (delivered when the enqueuing transaction commits).
const NOTIFY_POSTGRES: Option<&str> = Some("SELECT pg_notify('support_jobs', '')");

/// Wakes this process's workers whenever any replica enqueues a job, until
/// `stop`; reconnects after errors (the workers poll meanwhile).
async fn listen_postgres(
    pool: &sqlx::PgPool,
    wake: std::sync::Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    async fn listen(pool: &sqlx::PgPool, wake: &tokio::sync::Notify) -> DbResult<()> {
        let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
        l.listen(JOBS_CHANNEL).await?;
        loop {
            l.recv().await?;
            wake.notify_waiters();
        }
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listen(pool, &wake) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot listen for new jobs; polling meanwhile");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}

/// SQLite: every writer is in this process, whose own wake-up suffices.
async fn listen_sqlite(
    _pool: &sqlx::SqlitePool,
    _wake: std::sync::Arc<tokio::sync::Notify>,
    _stop: tokio_util::sync::CancellationToken,
) {
}

macro_rules! sql_database {
    ($name:ident, $db:ty, $pool:ty, $backend:literal, $claim:expr, $lock_upload_row:expr,
     $notify:expr, $listen:path) => {
        /// The database on
        #[doc = $backend]
        pub struct $name {
            pool: $pool,
        }

        impl $name {
            fn token_row(r: &<$db as sqlx::Database>::Row) -> DbResult<TokenRow> {
                Ok(TokenRow {
                    id: r.try_get("id")?,
                    role: r.try_get("role")?,
                    ticket: r.try_get("ticket")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            }

            fn image_row(r: &<$db as sqlx::Database>::Row) -> DbResult<ImageRow> {
                Ok(ImageRow {
                    id: r.try_get("id")?,
                    ticket: r.try_get("ticket")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason")?,
                    name: r.try_get("name")?,
                    size: r.try_get("size")?,
                    sha256: r.try_get("sha256")?,
                    received: r.try_get("received")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    completed_at: r.try_get("completed_at")?,
                    upload_expires_at: r.try_get("upload_expires_at")?,
                    index: IndexFields {
                        virtual_size: r.try_get("virtual_size")?,
                        fs_uuid: r.try_get("fs_uuid")?,
                        label: r.try_get("label")?,
                        fs_type: r.try_get("fs_type")?,
                        features: r.try_get("features")?,
                        block_size: r.try_get("block_size")?,
                        block_count: r.try_get("block_count")?,
                        free_blocks: r.try_get("free_blocks")?,
                        inode_count: r.try_get("inode_count")?,
                        free_inodes: r.try_get("free_inodes")?,
                        group_count: r.try_get("group_count")?,
                        state: r.try_get("state")?,
                        error_count: r.try_get("error_count")?,
                        first_error_function: r.try_get("first_error_function")?,
                        first_error_line: r.try_get("first_error_line")?,
                        first_error_time: r.try_get("first_error_time")?,
                        last_error_function: r.try_get("last_error_function")?,
                        last_error_line: r.try_get("last_error_line")?,
                        last_error_time: r.try_get("last_error_time")?,
                        journal_state: r.try_get("journal_state")?,
                        findings_errors: r.try_get("findings_errors")?,
                        findings_warnings: r.try_get("findings_warnings")?,
                    },
                    triage_status: r.try_get("triage_status")?,
                    assignee: r.try_get("assignee")?,
                    tags: r.try_get("tags")?,
                    notes: r.try_get("notes")?,
                })
            }

            fn chunk_row(r: &<$db as sqlx::Database>::Row) -> DbResult<ChunkRow> {
                Ok(ChunkRow {
                    offset: r.try_get("chunk_offset")?,
                    length: r.try_get("chunk_length")?,
                    sha256: r.try_get("sha256")?,
                })
            }
        }

        #[async_trait]
        impl Database for $name {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn create_token(
                &self,
                hash: &str,
                role: &str,
                ticket: Option<&str>,
                name: &str,
                now: i64,
                expires_at: Option<i64>,
            ) -> DbResult<i64> {
                let row = sqlx::query(
                    "INSERT INTO tokens (hash, role, ticket, name, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(hash)
                .bind(role)
                .bind(ticket)
                .bind(name)
                .bind(now)
                .bind(expires_at)
                .fetch_one(&self.pool)
                .await?;
                row.try_get("id")
            }

            async fn token_by_hash(&self, hash: &str) -> DbResult<Option<TokenRow>> {
                let row = sqlx::query(
                    "SELECT id, role, ticket, name, created_at, expires_at, revoked_at \
                     FROM tokens WHERE hash = $1",
                )
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(Self::token_row).transpose()
            }

            async fn list_tokens(&self) -> DbResult<Vec<TokenRow>> {
                let rows = sqlx::query(
                    "SELECT id, role, ticket, name, created_at, expires_at, revoked_at \
                     FROM tokens ORDER BY id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::token_row).collect()
            }

            async fn revoke_token(&self, id: i64, now: i64) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                let n = sqlx::query(
                    "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query("DELETE FROM sessions WHERE token_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn count_tokens(&self) -> DbResult<i64> {
                sqlx::query("SELECT COUNT(*) AS n FROM tokens")
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")
            }

            async fn create_first_admin(&self, hash: &str, now: i64) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                // A second replica's insert waits for this transaction, then
                // does nothing.
                let first = sqlx::query(
                    "INSERT INTO server_once (name, at) VALUES ('bootstrap_admin', $1) \
                     ON CONFLICT (name) DO NOTHING RETURNING name",
                )
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
                let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tokens")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                if !first || n > 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO tokens (hash, role, ticket, name, created_at, expires_at) \
                     VALUES ($1, 'admin', NULL, 'bootstrap admin', $2, NULL)",
                )
                .bind(hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn create_session(
                &self,
                hash: &str,
                token_id: i64,
                csrf: &str,
                now: i64,
                expires_at: i64,
            ) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO sessions (hash, token_id, csrf, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(hash)
                .bind(token_id)
                .bind(csrf)
                .bind(now)
                .bind(expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn session_by_hash(&self, hash: &str, now: i64) -> DbResult<Option<SessionRow>> {
                let row = sqlx::query(
                    "SELECT t.id, t.role, t.ticket, t.name, t.created_at, t.expires_at, \
                     t.revoked_at, s.csrf, s.expires_at AS session_expires_at \
                     FROM sessions s JOIN tokens t ON t.id = s.token_id \
                     WHERE s.hash = $1 AND s.expires_at > $2",
                )
                .bind(hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(SessionRow {
                        token: Self::token_row(&r)?,
                        csrf: r.try_get("csrf")?,
                        expires_at: r.try_get("session_expires_at")?,
                    })),
                }
            }

            async fn delete_session(&self, hash: &str) -> DbResult<()> {
                sqlx::query("DELETE FROM sessions WHERE hash = $1")
                    .bind(hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_expired_sessions(&self, now: i64) -> DbResult<u64> {
                Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn create_upload(&self, img: &NewImage, quota: i64) -> DbResult<bool> {
                // One statement: the quota check and the insert cannot be
                // separated by another insert on SQLite (single writer); on
                // PostgreSQL two racing creations may both pass by at most
                // one image's size.
                let n = sqlx::query(
                    "INSERT INTO images (id, ticket, status, name, size, sha256, received, \
                     created_at, updated_at, upload_expires_at, uploaded_by) \
                     SELECT $1, $2, 'uploading', $3, $4, $5, 0, $6, $6, $7, $8 \
                     WHERE (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM images \
                            WHERE ticket = $2) + $4 <= $9",
                )
                .bind(&img.id)
                .bind(&img.ticket)
                .bind(&img.name)
                .bind(img.size)
                .bind(&img.sha256)
                .bind(img.now)
                .bind(img.upload_expires_at)
                .bind(img.uploaded_by)
                .bind(quota)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn get_image(&self, id: &str) -> DbResult<Option<ImageRow>> {
                let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::image_row).transpose()
            }

            async fn list_images(&self, f: &Filter) -> DbResult<(Vec<ImageRow>, i64)> {
                let count_sql = format!("SELECT COUNT(*) AS n FROM images {}", f.where_sql);
                let mut q = sqlx::query(&count_sql);
                for b in &f.binds {
                    q = match b {
                        Bind::I(v) => q.bind(*v),
                        Bind::S(s) => q.bind(s.clone()),
                    };
                }
                let total: i64 = q.fetch_one(&self.pool).await?.try_get("n")?;
                let n = f.binds.len();
                let sql = format!(
                    "SELECT {IMAGE_COLUMNS} FROM images {} {} LIMIT ${} OFFSET ${}",
                    f.where_sql,
                    f.order_sql,
                    n + 1,
                    n + 2
                );
                let mut q = sqlx::query(&sql);
                for b in &f.binds {
                    q = match b {
                        Bind::I(v) => q.bind(*v),
                        Bind::S(s) => q.bind(s.clone()),
                    };
                }
                let rows = q.bind(f.limit).bind(f.offset).fetch_all(&self.pool).await?;
                let images = rows.iter().map(Self::image_row).collect::<DbResult<_>>()?;
                Ok((images, total))
            }

            async fn update_triage(&self, id: &str, t: &Triage, now: i64) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                let n = sqlx::query("UPDATE images SET updated_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Ok(false);
                }
                if let Some(s) = &t.triage_status {
                    sqlx::query("UPDATE images SET triage_status = $2 WHERE id = $1")
                        .bind(id)
                        .bind(s)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(a) = &t.assignee {
                    sqlx::query("UPDATE images SET assignee = $2 WHERE id = $1")
                        .bind(id)
                        .bind(a.as_deref())
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(tags) = &t.tags {
                    sqlx::query("UPDATE images SET tags = $2 WHERE id = $1")
                        .bind(id)
                        .bind(tags)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(notes) = &t.notes {
                    sqlx::query("UPDATE images SET notes = $2 WHERE id = $1")
                        .bind(id)
                        .bind(notes)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn delete_image(&self, id: &str) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                for sql in [
                    "DELETE FROM upload_chunks WHERE upload_id = $1",
                    "DELETE FROM upload_locks WHERE upload_id = $1",
                    "DELETE FROM image_results WHERE image_id = $1",
                    "DELETE FROM jobs WHERE image_id = $1 AND state <> 'running'",
                ] {
                    sqlx::query(sql).bind(id).execute(&mut *tx).await?;
                }
                let n = sqlx::query("DELETE FROM images WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn set_status(
                &self,
                id: &str,
                from: &[&str],
                status: &str,
                reason: Option<&str>,
                now: i64,
            ) -> DbResult<bool> {
                let from_list = from.join(",");
                let n = sqlx::query(
                    "UPDATE images SET status = $2, reason = $3, updated_at = $4 \
                     WHERE id = $1 AND (',' || $5 || ',') LIKE ('%,' || status || ',%')",
                )
                .bind(id)
                .bind(status)
                .bind(reason)
                .bind(now)
                .bind(from_list)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn expired_uploads(&self, now: i64) -> DbResult<Vec<String>> {
                let rows = sqlx::query(
                    "SELECT id FROM images WHERE status = 'uploading' AND upload_expires_at < $1",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| r.try_get("id")).collect()
            }

            async fn list_uploads(&self, expired_before: Option<i64>) -> DbResult<Vec<ImageRow>> {
                let rows = match expired_before {
                    None => {
                        let sql = format!(
                            "SELECT {IMAGE_COLUMNS} FROM images WHERE status = 'uploading' \
                             ORDER BY created_at, id"
                        );
                        sqlx::query(&sql).fetch_all(&self.pool).await?
                    }
                    Some(t) => {
                        let sql = format!(
                            "SELECT {IMAGE_COLUMNS} FROM images WHERE (status = 'uploading' \
                             AND upload_expires_at < $1) OR status = 'expired' \
                             ORDER BY created_at, id"
                        );
                        sqlx::query(&sql).bind(t).fetch_all(&self.pool).await?
                    }
                };
                rows.iter().map(Self::image_row).collect()
            }

            async fn retention_candidates(
                &self,
                closed_before: i64,
                limit: i64,
            ) -> DbResult<Vec<ImageRow>> {
                let sql = format!(
                    "SELECT {IMAGE_COLUMNS} FROM images WHERE status = 'deleting' \
                     OR (status NOT IN ('uploading', 'queued', 'analyzing') AND EXISTS \
                       (SELECT 1 FROM tickets t WHERE t.ticket = images.ticket \
                        AND t.closed_at IS NOT NULL AND t.closed_at <= $1 \
                        AND images.created_at <= t.closed_at)) \
                     ORDER BY created_at, id LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(closed_before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::image_row).collect()
            }

            async fn get_ticket(&self, ticket: &str) -> DbResult<TicketRow> {
                let row = sqlx::query("SELECT closed_at, closed_by FROM tickets WHERE ticket = $1")
                    .bind(ticket)
                    .fetch_optional(&self.pool)
                    .await?;
                let images: i64 = sqlx::query("SELECT COUNT(*) AS n FROM images WHERE ticket = $1")
                    .bind(ticket)
                    .fetch_one(&self.pool)
                    .await?
                    .try_get("n")?;
                let (closed_at, closed_by) = match row {
                    Some(r) => (r.try_get("closed_at")?, r.try_get("closed_by")?),
                    None => (None, None),
                };
                Ok(TicketRow {
                    ticket: ticket.to_string(),
                    closed_at,
                    closed_by,
                    images,
                })
            }

            async fn set_ticket_closed(
                &self,
                ticket: &str,
                closed_at: Option<i64>,
                by: Option<i64>,
                now: i64,
            ) -> DbResult<()> {
                sqlx::query(
                    "INSERT INTO tickets (ticket, closed_at, closed_by, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (ticket) DO UPDATE SET \
                     closed_at = CASE WHEN excluded.closed_at IS NULL THEN NULL \
                       ELSE COALESCE(tickets.closed_at, excluded.closed_at) END, \
                     closed_by = CASE WHEN excluded.closed_at IS NULL THEN NULL \
                       WHEN tickets.closed_at IS NULL THEN excluded.closed_by \
                       ELSE tickets.closed_by END, \
                     updated_at = excluded.updated_at",
                )
                .bind(ticket)
                .bind(closed_at)
                .bind(by)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn claim_maintenance(
                &self,
                name: &str,
                owner: &str,
                now: i64,
                next_run_at: i64,
            ) -> DbResult<bool> {
                sqlx::query(
                    "INSERT INTO maintenance (name, next_run_at) VALUES ($1, 0) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .execute(&self.pool)
                .await?;
                let n = sqlx::query(
                    "UPDATE maintenance SET next_run_at = $4, owner = $2, last_run_at = $3 \
                     WHERE name = $1 AND next_run_at <= $3",
                )
                .bind(name)
                .bind(owner)
                .bind(now)
                .bind(next_run_at)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn chunks_overlapping(
                &self,
                id: &str,
                start: i64,
                end: i64,
            ) -> DbResult<Vec<ChunkRow>> {
                let rows = sqlx::query(
                    "SELECT chunk_offset, chunk_length, sha256 FROM upload_chunks \
                     WHERE upload_id = $1 AND chunk_offset < $3 \
                       AND chunk_offset + chunk_length > $2 ORDER BY chunk_offset",
                )
                .bind(id)
                .bind(start)
                .bind(end)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::chunk_row).collect()
            }

            async fn all_chunks(&self, id: &str) -> DbResult<Vec<ChunkRow>> {
                let rows = sqlx::query(
                    "SELECT chunk_offset, chunk_length, sha256 FROM upload_chunks \
                     WHERE upload_id = $1 ORDER BY chunk_offset, chunk_length",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::chunk_row).collect()
            }

            async fn add_chunk(
                &self,
                id: &str,
                c: &ChunkRow,
                new_bytes: i64,
                now: i64,
                expires_at: i64,
            ) -> DbResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO upload_chunks (upload_id, chunk_offset, chunk_length, sha256, \
                     created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(c.offset)
                .bind(c.length)
                .bind(&c.sha256)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE images SET received = received + $2, updated_at = $3, \
                     upload_expires_at = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(new_bytes)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn complete_upload(
                &self,
                id: &str,
                sha256: &str,
                now: i64,
                job: &NewJob,
            ) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                let n = sqlx::query(
                    "UPDATE images SET status = 'queued', sha256 = $2, completed_at = $3, \
                     updated_at = $3, upload_expires_at = NULL, received = size \
                     WHERE id = $1 AND status = 'uploading'",
                )
                .bind(id)
                .bind(sha256)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(false);
                }
                for sql in [
                    "DELETE FROM upload_chunks WHERE upload_id = $1",
                    "DELETE FROM upload_locks WHERE upload_id = $1",
                ] {
                    sqlx::query(sql).bind(id).execute(&mut *tx).await?;
                }
                Self::insert_job(&mut *tx, job, now).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn lock_upload_range(&self, l: &NewRangeLock<'_>) -> DbResult<RangeLock> {
                let mut tx = self.pool.begin().await?;
                let row_lock: Option<&str> = $lock_upload_row;
                if let Some(sql) = row_lock {
                    sqlx::query(sql).bind(l.upload_id).execute(&mut *tx).await?;
                }
                let taken = sqlx::query(TAKE_UPLOAD_LOCK)
                    .bind(l.upload_id)
                    .bind(l.start)
                    .bind(l.end)
                    .bind(l.kind)
                    .bind(l.owner)
                    .bind(l.now)
                    .bind(l.expires_at)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                if let Some(r) = taken {
                    return Ok(RangeLock::Taken(r.try_get("id")?));
                }
                // Not taken: say why (a snapshot; callers try again).
                let open = sqlx::query(
                    "SELECT 1 AS one FROM images WHERE id = $1 AND status = 'uploading'",
                )
                .bind(l.upload_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
                if !open {
                    return Ok(RangeLock::Closed);
                }
                let closing = sqlx::query(
                    "SELECT 1 AS one FROM upload_locks WHERE upload_id = $1 AND kind = $4 \
                     AND range_start < $3 AND range_end > $2 AND expires_at >= $5",
                )
                .bind(l.upload_id)
                .bind(l.start)
                .bind(l.end)
                .bind(super::LOCK_CLOSE)
                .bind(l.now)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
                Ok(RangeLock::Busy { closing })
            }

            async fn renew_upload_lock(&self, lock: i64, expires_at: i64) -> DbResult<bool> {
                Ok(sqlx::query("UPDATE upload_locks SET expires_at = $2 WHERE id = $1")
                    .bind(lock)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn unlock_upload_range(&self, lock: i64) -> DbResult<()> {
                sqlx::query("DELETE FROM upload_locks WHERE id = $1")
                    .bind(lock)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_upload_size(&self, id: &str, size: i64, quota: i64) -> DbResult<bool> {
                // One statement, like create_upload: the quota check sees the
                // other images of the ticket (this one counts 0 until now).
                let n = sqlx::query(
                    "UPDATE images SET size = $2 WHERE id = $1 AND status = 'uploading' \
                     AND size = 0 AND (SELECT CAST(COALESCE(SUM(i.size), 0) AS BIGINT) \
                     FROM images i WHERE i.ticket = images.ticket) + $2 <= $3",
                )
                .bind(id)
                .bind(size)
                .bind(quota)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn store_results(
                &self,
                id: &str,
                ix: &IndexFields,
                parts: &[(&str, i64, String)],
                now: i64,
                lease: &Lease<'_>,
                then: &[NewJob],
            ) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                // First: the job row stays locked until commit, so a
                // takeover waits and then finds the job done.
                if !Self::end_job(&mut *tx, lease, "done", None, now).await? {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM image_results WHERE image_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                for (kind, part, body) in parts {
                    sqlx::query(
                        "INSERT INTO image_results (image_id, kind, part, body) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(*kind)
                    .bind(*part)
                    .bind(body)
                    .execute(&mut *tx)
                    .await?;
                }
                let n = sqlx::query(
                    "UPDATE images SET status = 'ready', reason = NULL, updated_at = $2, \
                     virtual_size = $3, fs_uuid = $4, label = $5, fs_type = $6, features = $7, \
                     block_size = $8, block_count = $9, free_blocks = $10, inode_count = $11, \
                     free_inodes = $12, group_count = $13, state = $14, error_count = $15, \
                     first_error_function = $16, first_error_line = $17, first_error_time = $18, \
                     last_error_function = $19, last_error_line = $20, last_error_time = $21, \
                     journal_state = $22, findings_errors = $23, findings_warnings = $24 \
                     WHERE id = $1 AND status = 'analyzing'",
                )
                .bind(id)
                .bind(now)
                .bind(ix.virtual_size)
                .bind(&ix.fs_uuid)
                .bind(&ix.label)
                .bind(&ix.fs_type)
                .bind(&ix.features)
                .bind(ix.block_size)
                .bind(ix.block_count)
                .bind(ix.free_blocks)
                .bind(ix.inode_count)
                .bind(ix.free_inodes)
                .bind(ix.group_count)
                .bind(&ix.state)
                .bind(ix.error_count)
                .bind(&ix.first_error_function)
                .bind(ix.first_error_line)
                .bind(ix.first_error_time)
                .bind(&ix.last_error_function)
                .bind(ix.last_error_line)
                .bind(ix.last_error_time)
                .bind(&ix.journal_state)
                .bind(ix.findings_errors)
                .bind(ix.findings_warnings)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(false);
                }
                for job in then {
                    Self::insert_job(&mut *tx, job, now).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn fail_image(
                &self,
                id: &str,
                reason: &str,
                now: i64,
                lease: &Lease<'_>,
                job_state: &str,
                then: &[NewJob],
            ) -> DbResult<bool> {
                let mut tx = self.pool.begin().await?;
                if !Self::end_job(&mut *tx, lease, job_state, Some(reason), now).await? {
                    return Ok(false);
                }
                let n = sqlx::query(
                    "UPDATE images SET status = 'failed', reason = $2, updated_at = $3 \
                     WHERE id = $1 AND status IN ('queued', 'analyzing')",
                )
                .bind(id)
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(false);
                }
                for job in then {
                    Self::insert_job(&mut *tx, job, now).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn get_result(&self, id: &str, kind: &str, part: i64) -> DbResult<Option<String>> {
                let row = sqlx::query(
                    "SELECT body FROM image_results WHERE image_id = $1 AND kind = $2 AND part = $3",
                )
                .bind(id)
                .bind(kind)
                .bind(part)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| r.try_get("body")).transpose()
            }

            async fn get_result_parts(
                &self,
                id: &str,
                kind: &str,
                first: i64,
                last: i64,
            ) -> DbResult<Vec<(i64, String)>> {
                let rows = sqlx::query(
                    "SELECT part, body FROM image_results WHERE image_id = $1 AND kind = $2 \
                     AND part >= $3 AND part <= $4 ORDER BY part",
                )
                .bind(id)
                .bind(kind)
                .bind(first)
                .bind(last)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("part")?, r.try_get("body")?)))
                    .collect()
            }

            async fn enqueue(&self, job: &NewJob, now: i64) -> DbResult<i64> {
                let mut conn = self.pool.acquire().await?;
                Self::insert_job(&mut *conn, job, now).await
            }

            async fn claim_job(&self, owner: &str, now: i64, lease_secs: i64) -> DbResult<Option<Job>> {
                let row = sqlx::query($claim)
                    .bind(owner)
                    .bind(now + lease_secs)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(Job {
                        id: r.try_get("id")?,
                        kind: r.try_get("kind")?,
                        image_id: r.try_get("image_id")?,
                        payload: r.try_get("payload")?,
                        attempts: r.try_get("attempts")?,
                        max_attempts: r.try_get("max_attempts")?,
                    })),
                }
            }

            async fn heartbeat(&self, id: i64, owner: &str, now: i64, lease_secs: i64) -> DbResult<bool> {
                let n = sqlx::query(
                    "UPDATE jobs SET heartbeat_at = $3, lease_expires_at = $4 \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                )
                .bind(id)
                .bind(owner)
                .bind(now)
                .bind(now + lease_secs)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn finish_job(&self, id: i64, owner: &str, now: i64) -> DbResult<()> {
                sqlx::query(
                    "UPDATE jobs SET state = 'done', updated_at = $3, lease_owner = NULL, \
                     lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn retry_job(
                &self,
                id: i64,
                owner: &str,
                run_at: i64,
                err: &str,
                now: i64,
            ) -> DbResult<()> {
                sqlx::query(
                    "UPDATE jobs SET state = 'queued', run_at = $3, last_error = $4, \
                     updated_at = $5, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(run_at)
                .bind(err)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn fail_job(&self, id: i64, owner: &str, err: &str, now: i64) -> DbResult<()> {
                sqlx::query(
                    "UPDATE jobs SET state = 'failed', last_error = $3, updated_at = $4, \
                     lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(err)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn listen_for_jobs(
                &self,
                wake: std::sync::Arc<tokio::sync::Notify>,
                stop: tokio_util::sync::CancellationToken,
            ) {
                $listen(&self.pool, wake, stop).await
            }

            async fn job_counts(&self) -> DbResult<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
                    .collect()
            }

            async fn image_counts(&self) -> DbResult<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM images GROUP BY status")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
                    .collect()
            }

            async fn create_webhook(
                &self,
                ticket: &str,
                url: &str,
                secret: &str,
                created_by: i64,
                now: i64,
            ) -> DbResult<i64> {
                sqlx::query(
                    "INSERT INTO webhooks (ticket, url, secret, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(ticket)
                .bind(url)
                .bind(secret)
                .bind(created_by)
                .bind(now)
                .fetch_one(&self.pool)
                .await?
                .try_get("id")
            }

            async fn list_webhooks(&self) -> DbResult<Vec<WebhookRow>> {
                let rows = sqlx::query(
                    "SELECT id, ticket, url, secret, created_at FROM webhooks ORDER BY id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(WebhookRow {
                            id: r.try_get("id")?,
                            ticket: r.try_get("ticket")?,
                            url: r.try_get("url")?,
                            secret: r.try_get("secret")?,
                            created_at: r.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn delete_webhook(&self, id: i64) -> DbResult<bool> {
                Ok(sqlx::query("DELETE FROM webhooks WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1)
            }
        }

        impl $name {
            /// Ends a job still leased by `lease.owner`; false if the lease
            /// was lost (taken over after it expired).
            async fn end_job(
                conn: &mut <$db as sqlx::Database>::Connection,
                lease: &Lease<'_>,
                state: &str,
                err: Option<&str>,
                now: i64,
            ) -> DbResult<bool> {
                let n = sqlx::query(
                    "UPDATE jobs SET state = $3, last_error = COALESCE($4, last_error), \
                     updated_at = $5, lease_owner = NULL, lease_expires_at = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                )
                .bind(lease.job_id)
                .bind(lease.owner)
                .bind(state)
                .bind(err)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn insert_job(
                conn: &mut <$db as sqlx::Database>::Connection,
                job: &NewJob,
                now: i64,
            ) -> DbResult<i64> {
                let id: i64 = sqlx::query(
                    "INSERT INTO jobs (kind, image_id, payload, state, priority, run_at, \
                     attempts, max_attempts, created_at, updated_at) \
                     VALUES ($1, $2, $3, 'queued', 0, $4, 0, $5, $6, $6) RETURNING id",
                )
                .bind(job.kind)
                .bind(&job.image_id)
                .bind(&job.payload)
                .bind(job.run_at)
                .bind(job.max_attempts)
                .bind(now)
                .fetch_one(&mut *conn)
                .await?
                .try_get("id")?;
                let notify: Option<&str> = $notify;
                if let Some(sql) = notify {
                    sqlx::query(sql).execute(&mut *conn).await?;
                }
                Ok(id)
            }
        }
    };
}

sql_database!(
    SqliteDb,
    sqlx::Sqlite,
    sqlx::SqlitePool,
    "sqlite",
    CLAIM_SQLITE,
    None,
    None,
    listen_sqlite
);
sql_database!(
    PostgresDb,
    sqlx::Postgres,
    sqlx::PgPool,
    "postgres",
    CLAIM_POSTGRES,
    LOCK_UPLOAD_ROW_POSTGRES,
    NOTIFY_POSTGRES,
    listen_postgres
);

impl SqliteDb {
    /// Opens (creating if missing) a SQLite file and migrates it.
    pub async fn connect_file(path: &std::path::Path) -> DbResult<Self> {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
        Self::connect_with(opts).await
    }

    /// Opens a `sqlite:` URL and migrates it.
    pub async fn connect_url(url: &str) -> DbResult<Self> {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
        Self::connect_with(opts).await
    }

    async fn connect_with(opts: sqlx::sqlite::SqliteConnectOptions) -> DbResult<Self> {
        use sqlx::sqlite::{SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
        // WAL + synchronous=FULL: a committed transaction (an acknowledged
        // chunk) survives a crash of the process and of the machine.
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(SqliteDb { pool })
    }
}

impl PostgresDb {
    /// Connects to PostgreSQL and migrates it.
    pub async fn connect(url: &str) -> DbResult<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(PostgresDb { pool })
    }
}
