-- support-server schema, SQLite flavour. Timestamps are Unix seconds (BIGINT)
-- so that both backends share every query; list-valued fields (features,
-- tags) are stored space-delimited with a leading and trailing space so a
-- `LIKE '% word %'` finds whole words.

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    hash        TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    ticket      TEXT,
    name        TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

CREATE TABLE sessions (
    hash        TEXT    PRIMARY KEY,
    token_id    BIGINT  NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    csrf        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);

CREATE TABLE images (
    id                   TEXT    PRIMARY KEY,
    ticket               TEXT    NOT NULL,
    status               TEXT    NOT NULL,
    reason               TEXT,
    name                 TEXT    NOT NULL DEFAULT '',
    size                 BIGINT  NOT NULL,
    sha256               TEXT,
    received             BIGINT  NOT NULL DEFAULT 0,
    created_at           BIGINT  NOT NULL,
    updated_at           BIGINT  NOT NULL,
    completed_at         BIGINT,
    upload_expires_at    BIGINT,
    uploaded_by          BIGINT,
    virtual_size         BIGINT,
    fs_uuid              TEXT,
    label                TEXT,
    fs_type              TEXT,
    features             TEXT,
    block_size           BIGINT,
    block_count          BIGINT,
    free_blocks          BIGINT,
    inode_count          BIGINT,
    free_inodes          BIGINT,
    group_count          BIGINT,
    state                TEXT,
    error_count          BIGINT,
    first_error_function TEXT,
    first_error_line     BIGINT,
    first_error_time     BIGINT,
    last_error_function  TEXT,
    last_error_line      BIGINT,
    last_error_time      BIGINT,
    journal_state        TEXT,
    findings_errors      BIGINT,
    findings_warnings    BIGINT,
    triage_status        TEXT    NOT NULL DEFAULT 'new',
    assignee             TEXT,
    tags                 TEXT    NOT NULL DEFAULT ' ',
    notes                TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX images_ticket ON images(ticket);
CREATE INDEX images_created ON images(created_at);
CREATE INDEX images_status ON images(status);
CREATE INDEX images_fs_uuid ON images(fs_uuid);

-- Acknowledged chunks of uploads still in progress (deleted at completion).
CREATE TABLE upload_chunks (
    upload_id     TEXT    NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    chunk_offset  BIGINT  NOT NULL,
    chunk_length  BIGINT  NOT NULL,
    sha256        TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    PRIMARY KEY (upload_id, chunk_offset, chunk_length)
);

-- Analysis results; `groups` is split into parts of a fixed number of groups
-- so paging never parses the whole table.
CREATE TABLE image_results (
    image_id  TEXT    NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    kind      TEXT    NOT NULL,
    part      BIGINT  NOT NULL,
    body      TEXT    NOT NULL,
    PRIMARY KEY (image_id, kind, part)
);

-- The job queue. A job is claimed by setting a lease; a worker heartbeats
-- while it runs; an expired lease may be taken over by another worker.
CREATE TABLE jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind              TEXT    NOT NULL,
    image_id          TEXT,
    payload           TEXT    NOT NULL DEFAULT '{}',
    state             TEXT    NOT NULL,
    priority          BIGINT  NOT NULL DEFAULT 0,
    run_at            BIGINT  NOT NULL,
    attempts          BIGINT  NOT NULL DEFAULT 0,
    max_attempts      BIGINT  NOT NULL,
    last_error        TEXT,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    heartbeat_at      BIGINT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
CREATE INDEX jobs_claim ON jobs(state, priority, run_at, id);

CREATE TABLE webhooks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    created_by  BIGINT,
    created_at  BIGINT  NOT NULL
);
