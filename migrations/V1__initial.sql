-- Momentum schema, version 1. Applied by refinery on start (src/store/postgres.rs); never
-- edit an applied migration, add V2__… instead.

-- The event log. `seq` is given out by `log_state` in the appending transaction, so it is
-- strictly increasing in commit order and never reused.
CREATE TABLE log_state (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last_seq BIGINT NOT NULL CHECK (last_seq >= 0)
);
INSERT INTO log_state (id, last_seq) VALUES (TRUE, 0);

CREATE TABLE events (
    seq BIGINT PRIMARY KEY,
    event_id TEXT,
    user_id TEXT NOT NULL,
    item_id TEXT,
    kind TEXT NOT NULL,
    value REAL,
    ts_ms BIGINT NOT NULL,
    recommendation_id TEXT
);
CREATE INDEX events_user_id ON events (user_id);
CREATE INDEX events_ts_ms ON events (ts_ms);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    profile JSONB NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- Deleted items stay as tombstones so events for them can be refused after a restart.
CREATE TABLE items (
    item_id TEXT PRIMARY KEY,
    meta JSONB NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE snapshots (
    id BIGINT PRIMARY KEY,
    covers_seq BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- A part with a user_id belongs to that user (GDPR erasure deletes it).
CREATE TABLE snapshot_parts (
    snapshot_id BIGINT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    user_id TEXT,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (snapshot_id, key)
);
CREATE INDEX snapshot_parts_user_id ON snapshot_parts (user_id) WHERE user_id IS NOT NULL;

-- Training examples for the trainer (one row per user and example).
CREATE TABLE training_rows (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    item_id TEXT,
    ts_ms BIGINT NOT NULL,
    features REAL[] NOT NULL,
    label REAL,
    split TEXT
);
CREATE INDEX training_rows_user_id ON training_rows (user_id);
CREATE INDEX training_rows_ts_ms ON training_rows (ts_ms);

-- Every model version; `bytes` are encrypted by the caller (AES-GCM) before they get here.
CREATE TABLE models (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    parent_version BIGINT,
    metadata JSONB NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (name, version)
);

-- The churn outbox.
CREATE TABLE interventions (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    day DATE NOT NULL,
    tier TEXT NOT NULL,
    channel TEXT NOT NULL,
    payload JSONB NOT NULL,
    delivery_state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    UNIQUE (user_id, day, channel)
);

CREATE TABLE churn_scores (
    user_id TEXT NOT NULL,
    day DATE NOT NULL,
    probability REAL NOT NULL,
    confidence REAL,
    tier TEXT NOT NULL,
    PRIMARY KEY (user_id, day)
);
