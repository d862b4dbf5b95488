-- Raw vehicle telemetry, one row per sample, partitioned by UTC day.
--
-- No primary key or unique constraint: the bridge deduplicates by (battery_id, seq) before
-- writing, and COPY stays fast without a uniqueness check per row.
CREATE TABLE telemetry (
    battery_id      text             NOT NULL,
    vehicle_id      text             NOT NULL,
    seq             bigint           NOT NULL,
    ts              timestamptz      NOT NULL,
    pack_voltage_v  real             NOT NULL,
    current_a       real             NOT NULL,
    temp_c          real             NOT NULL,
    soc_pct         real             NOT NULL,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    odometer_km     real             NOT NULL,
    speed_kmh       real             NOT NULL,
    cell_min_v      real,
    cell_max_v      real,
    ingested_at     timestamptz      NOT NULL DEFAULT now()
) PARTITION BY RANGE (ts);

-- Rows whose day has no partition land here, so an insert never fails.
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

CREATE INDEX telemetry_battery_ts ON telemetry (battery_id, ts);

-- Create the partition for one UTC day if it is missing; true when it created one.
--
-- Rows of that day already in the default partition are moved into the new partition first,
-- because Postgres refuses a new partition whose range the default partition already holds.
CREATE FUNCTION telemetry_ensure_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('telemetry_p%s', to_char(day, 'YYYYMMDD'));
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- Serialise creators; the second one finds the table after waiting.
    PERFORM pg_advisory_xact_lock(hashtext('bms.telemetry_ensure_partition'));
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    BEGIN
        IF EXISTS (SELECT 1 FROM telemetry_default WHERE ts >= lo AND ts < hi) THEN
            EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM telemetry_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved', part) USING lo, hi;
            EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           part, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%L) TO (%L)',
                           part, lo, hi);
        END IF;
    EXCEPTION WHEN duplicate_table THEN
        -- An advisory lock does not refresh this backend's catalog cache, so a creator that
        -- waited on it can miss the table the first one just committed: it exists, fine.
        RETURN false;
    END;
    RETURN true;
END
$$;
