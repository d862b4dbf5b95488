-- Alerts (contracts.alerts): one row per alert, one event per state change, and silences.
--
-- The lifecycle (pending -> firing -> acknowledged -> resolved) is decided by the alert
-- book (alerts.book); the checks here only keep values a reader can trust. Times are
-- timestamptz, read back as Unix seconds like every other store.
CREATE TABLE alerts (
    id               bigserial        PRIMARY KEY,
    dedup_key        text             NOT NULL CHECK (dedup_key <> ''),
    kind             text             NOT NULL CHECK (kind <> ''),
    category         text             NOT NULL
        CHECK (category IN ('health', 'anomaly', 'maintenance', 'operations')),
    severity         text             NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state            text             NOT NULL
        CHECK (state IN ('pending', 'firing', 'acknowledged', 'resolved')),
    summary          text             NOT NULL,
    source           text             NOT NULL,
    battery_id       text,
    vehicle_id       text,
    zone             text,
    lat              double precision,
    lon              double precision,
    labels           jsonb            NOT NULL DEFAULT '{}'::jsonb,
    evidence         jsonb            NOT NULL DEFAULT '{}'::jsonb,
    started_at       timestamptz      NOT NULL,
    fired_at         timestamptz,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    last_active_at   timestamptz      NOT NULL,
    clear_since      timestamptz,
    silenced_by      bigint,
    inhibited_by     text,
    CHECK ((state = 'resolved') = (resolved_at IS NOT NULL)),
    CHECK ((acknowledged_at IS NULL) = (acknowledged_by IS NULL))
);

-- Dedup, enforced by the database too: at most one open alert per key. Resolved alerts of
-- the key stay as history, any number of them.
CREATE UNIQUE INDEX alerts_open_key_idx ON alerts (dedup_key) WHERE state <> 'resolved';

-- The API lists newest first, filtered by state, severity or battery.
CREATE INDEX alerts_started_idx ON alerts (started_at DESC, id DESC);
CREATE INDEX alerts_state_started_idx ON alerts (state, started_at DESC);
CREATE INDEX alerts_severity_started_idx ON alerts (severity, started_at DESC);
CREATE INDEX alerts_battery_started_idx ON alerts (battery_id, started_at DESC)
    WHERE battery_id IS NOT NULL;

-- Every state change, timestamped and attributed. from_state is NULL for the opening event.
CREATE TABLE alert_events (
    id          bigserial   PRIMARY KEY,
    alert_id    bigint      NOT NULL REFERENCES alerts (id),
    at          timestamptz NOT NULL,
    from_state  text,
    to_state    text        NOT NULL
        CHECK (to_state IN ('pending', 'firing', 'acknowledged', 'resolved')),
    actor       text        NOT NULL CHECK (actor <> ''),
    note        text
);

CREATE INDEX alert_events_alert_idx ON alert_events (alert_id, id);

-- Silences mute the alerts their matchers (label equalities) select, from starts_at to
-- ends_at. Expiring one early moves ends_at to the moment and records who did it.
CREATE TABLE alert_silences (
    id          bigserial   PRIMARY KEY,
    matchers    jsonb       NOT NULL CHECK (jsonb_typeof(matchers) = 'object' AND matchers <> '{}'::jsonb),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    author      text        NOT NULL CHECK (author <> ''),
    comment     text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_by  text,
    CHECK (ends_at > starts_at)
);

CREATE INDEX alert_silences_ends_idx ON alert_silences (ends_at);
