-- Messages the bridge rejected, with the reason counter and a human-readable detail.
-- The payload is truncated (the bridge keeps at most a few KiB); payload_bytes is its full size.
CREATE TABLE dead_letters (
    id             bigserial   PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    topic          text        NOT NULL,
    reason         text        NOT NULL,
    detail         text        NOT NULL,
    payload        bytea       NOT NULL,
    payload_bytes  integer     NOT NULL
);

CREATE INDEX dead_letters_received_at ON dead_letters (received_at);
CREATE INDEX dead_letters_reason_received_at ON dead_letters (reason, received_at);
