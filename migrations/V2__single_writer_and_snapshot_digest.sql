-- Momentum schema, version 2: one writer per schema, and checksummed snapshots.

-- Incremented by every server that becomes the schema's writer (it holds the session advisory
-- lock 'momentum.writer:<schema>'). Every append and snapshot write checks, in its own
-- transaction, that the epoch is still the one its server took: a server that lost its lock
-- to a newer one can no longer write (src/store/postgres.rs).
ALTER TABLE log_state ADD COLUMN writer_epoch BIGINT NOT NULL DEFAULT 0;

-- sha256 over the snapshot's parts (src/store/mod.rs, snapshot_digest); NULL for snapshots
-- written before version 2.
ALTER TABLE snapshots ADD COLUMN digest BYTEA;
