-- Operations: ticket lifecycle (for the retention policy) and periodic
-- maintenance tasks claimed by one server at a time.

-- A ticket is closed when a maintainer, an admin or its ticket system says
-- so (POST /api/v1/tickets/{ticket}/close); tickets without a row are open.
CREATE TABLE tickets (
    ticket      TEXT    PRIMARY KEY,
    closed_at   BIGINT,
    closed_by   BIGINT,
    updated_at  BIGINT  NOT NULL
);

-- One row per periodic task: the server that moves `next_run_at` forward
-- (a conditional UPDATE) runs the task this round; the others skip it.
CREATE TABLE maintenance (
    name         TEXT    PRIMARY KEY,
    next_run_at  BIGINT  NOT NULL,
    owner        TEXT,
    last_run_at  BIGINT
);
