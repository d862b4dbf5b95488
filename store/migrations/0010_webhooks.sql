-- Outgoing webhooks (contracts/webhooks.py): subscriptions, the delivery queue, every
-- attempt, and vendor tickets for battery replacements.
--
-- The secret is the symmetric HMAC key the receiver verifies signatures with, so it is
-- stored as is (a hash could not sign); it is shown once, when the subscription is made,
-- and never listed (docs/security.md, "Webhooks").
CREATE TABLE webhook_subscriptions (
    id              bigserial   PRIMARY KEY,
    url             text        NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    description     text        NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    min_severity    text        NOT NULL CHECK (min_severity IN ('info', 'warning', 'critical')),
    event_types     text[]      NOT NULL CHECK (
        cardinality(event_types) >= 1
        AND event_types <@ ARRAY['alert.firing', 'alert.acknowledged', 'alert.resolved',
                                 'vendor.ticket']::text[]
    ),
    matchers        jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(matchers) = 'object'),
    secret          text        NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$'),
    enabled         boolean     NOT NULL DEFAULT true,
    disabled_reason text,
    disabled_at     timestamptz,
    created_by      text        NOT NULL CHECK (length(created_by) BETWEEN 1 AND 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (enabled = (disabled_at IS NULL) AND enabled = (disabled_reason IS NULL))
);

-- One event for one subscription. msg_id is the Standard Webhooks webhook-id: the same on
-- every retry and replay, and unique per subscription, so queueing an event twice under one
-- id (a vendor ticket asked for again) delivers it once.
CREATE TABLE webhook_deliveries (
    id               bigserial        PRIMARY KEY,
    subscription_id  bigint           NOT NULL REFERENCES webhook_subscriptions (id),
    msg_id           text             NOT NULL CHECK (msg_id ~ '^msg_[0-9a-f]{32}$'),
    event_type       text             NOT NULL,
    payload          jsonb            NOT NULL,
    state            text             NOT NULL
        CHECK (state IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts         integer          NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Attempts made before the last replay: the retry schedule counts from here.
    retry_base       integer          NOT NULL DEFAULT 0 CHECK (retry_base BETWEEN 0 AND attempts),
    next_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    last_latency_ms  double precision,
    created_at       timestamptz      NOT NULL,
    delivered_at     timestamptz,
    replayed_by      text,
    replayed_at      timestamptz,
    UNIQUE (subscription_id, msg_id),
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);

-- The dispatcher's claim: due pending deliveries, oldest due first.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
-- A subscription's deliveries, newest first (the API).
CREATE INDEX webhook_deliveries_subscription_idx ON webhook_deliveries (subscription_id, id);

CREATE TABLE webhook_attempts (
    id           bigserial        PRIMARY KEY,
    delivery_id  bigint           NOT NULL REFERENCES webhook_deliveries (id),
    attempt      integer          NOT NULL CHECK (attempt >= 1),
    at           timestamptz      NOT NULL,
    status_code  integer          CHECK (status_code BETWEEN 100 AND 599),
    error        text,
    latency_ms   double precision NOT NULL CHECK (latency_ms >= 0)
);

CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, attempt);

-- One ticket per replacement work order, however often it is asked for.
CREATE TABLE vendor_tickets (
    work_order_id  bigint      PRIMARY KEY REFERENCES work_orders (id),
    battery_id     text        NOT NULL,
    msg_id         text        NOT NULL UNIQUE CHECK (msg_id ~ '^msg_[0-9a-f]{32}$'),
    status         text        NOT NULL DEFAULT 'sent'
        CHECK (status IN ('sent', 'accepted', 'rejected', 'rma')),
    rma_number     text,
    reply_note     text,
    replied_at     timestamptz,
    created_at     timestamptz NOT NULL,
    CHECK (status <> 'rma' OR rma_number IS NOT NULL)
);
