-- Technician work orders and their history: one row per order, one event per change.
--
-- The state machine itself (which moves are allowed) lives in planners.work_orders; the
-- checks here only keep values a reader can trust.
CREATE TABLE work_orders (
    id             bigserial        PRIMARY KEY,
    kind           text             NOT NULL
        CHECK (kind IN ('battery_swap', 'battery_replacement', 'inspection')),
    state          text             NOT NULL
        CHECK (state IN ('planned', 'assigned', 'en_route', 'done', 'failed', 'cancelled')),
    vehicle_id     text             NOT NULL,
    battery_id     text             NOT NULL,
    lat            double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon            double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    priority       double precision NOT NULL,
    value          double precision NOT NULL,
    technician_id  text,
    created_at     timestamptz      NOT NULL DEFAULT now(),
    updated_at     timestamptz      NOT NULL DEFAULT now()
);

-- The planner lists open orders by state.
CREATE INDEX work_orders_state_idx ON work_orders (state);

-- Every change, timestamped and attributed. from_state is NULL for the creating event.
-- The swap columns are filled only when a battery swap or replacement is done.
CREATE TABLE work_order_events (
    id                bigserial   PRIMARY KEY,
    work_order_id     bigint      NOT NULL REFERENCES work_orders (id),
    at                timestamptz NOT NULL DEFAULT now(),
    from_state        text,
    to_state          text        NOT NULL,
    actor             text        NOT NULL,
    technician_id     text,
    note              text,
    swap_vehicle_id   text,
    swap_battery_out  text,
    swap_battery_in   text,
    CHECK ((swap_vehicle_id IS NULL) = (swap_battery_out IS NULL)
           AND (swap_battery_out IS NULL) = (swap_battery_in IS NULL))
);

CREATE INDEX work_order_events_order_idx ON work_order_events (work_order_id, id);
