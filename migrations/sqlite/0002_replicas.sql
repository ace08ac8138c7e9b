-- Several `support-server` replicas on one database (issue 8).

-- Locks on byte ranges of uploads in progress, shared by every replica: a
-- chunk holds its range while it compares and writes its bytes; a
-- completion or an abort holds the whole upload (kind 'close'). The holder
-- renews `expires_at` while it works; a lock whose holder died (a replica
-- killed) is ignored once `expires_at` has passed.
CREATE TABLE upload_locks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    upload_id    TEXT    NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    range_start  BIGINT  NOT NULL,
    range_end    BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    expires_at   BIGINT  NOT NULL
);
CREATE INDEX upload_locks_upload ON upload_locks(upload_id, range_start);

-- Things that happen once per installation whatever the number of replicas
-- starting at the same time (the bootstrap admin token).
CREATE TABLE server_once (
    name  TEXT    PRIMARY KEY,
    at    BIGINT  NOT NULL
);
