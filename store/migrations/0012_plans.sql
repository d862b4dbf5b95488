-- The planner's plans (planners.planner.PlanRecord, as its to_dict), newest last.
--
-- A restarted planner loads the newest one, so technicians keep their routes and stops
-- under way stay locked until the next plan. Only the latest is read back; the store keeps
-- a bounded tail (PlanStore.keep) for inspection. Rows are ordered by id, not made_at: a
-- what-if run's clock may be anywhere in time.
CREATE TABLE plans (
    id       bigserial   PRIMARY KEY,
    made_at  timestamptz NOT NULL,
    reason   text        NOT NULL,
    record   jsonb       NOT NULL CHECK (jsonb_typeof(record) = 'object')
);
