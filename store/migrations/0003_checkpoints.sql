-- The latest checkpoint of each twin shard (older ones are overwritten).
CREATE TABLE shard_checkpoints (
    shard_id  integer     PRIMARY KEY,
    taken_at  timestamptz NOT NULL,
    payload   bytea       NOT NULL,
    n_twins   integer     NOT NULL
);

-- Store the payload uncompressed: pglz over tens of MB costs seconds of the database's CPU
-- on every save, and callers that want compression do it before handing the bytes over.
ALTER TABLE shard_checkpoints ALTER COLUMN payload SET STORAGE EXTERNAL;
