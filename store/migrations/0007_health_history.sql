-- Fleet health over time: one row per battery per batch rescoring run, so trends per
-- battery and per cohort (batteries first seen in the same month) can be computed.
CREATE TABLE health_history (
    battery_id     text             NOT NULL,
    scored_at      timestamptz      NOT NULL,
    cohort         text             NOT NULL,
    soh_pct        double precision NOT NULL CHECK (soh_pct BETWEEN 0 AND 150),
    health_score   double precision NOT NULL CHECK (health_score BETWEEN 0 AND 100),
    efc            double precision NOT NULL CHECK (efc >= 0),
    model_version  integer          NOT NULL,
    PRIMARY KEY (battery_id, scored_at)
);

CREATE INDEX health_history_cohort_idx ON health_history (cohort, scored_at);
