-- The battery -> twin shard directory, so a restart puts every twin back on its shard.
CREATE TABLE battery_shards (
    battery_id   text        PRIMARY KEY,
    shard_id     integer     NOT NULL,
    assigned_at  timestamptz NOT NULL DEFAULT now()
);

-- A restarted shard lists its own batteries.
CREATE INDEX battery_shards_shard_idx ON battery_shards (shard_id);
