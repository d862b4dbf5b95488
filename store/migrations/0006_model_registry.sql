-- The model registry: every registered version of every model, what Serve loads now, and an
-- append-only audit trail of every change.
--
-- The rules of a model's life (which promotions and splits are allowed, how a rollback finds
-- its target) live in store.model_registry_store; the checks here only keep values a reader
-- can trust.
CREATE TABLE model_versions (
    name              text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    -- 1, 2, 3, ... per name, assigned under a per-name advisory lock.
    version           integer     NOT NULL CHECK (version >= 1),
    created_at        timestamptz NOT NULL DEFAULT now(),
    metrics           jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metrics) = 'object'),
    params            jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(params) = 'object'),
    data_fingerprint  text        NOT NULL,
    artifact_path     text        NOT NULL,
    stage             text        NOT NULL DEFAULT 'candidate'
        CHECK (stage IN ('candidate', 'production', 'archived')),
    created_by        text        NOT NULL,
    PRIMARY KEY (name, version)
);

-- At most one production version per model, whatever the code above does.
CREATE UNIQUE INDEX model_versions_one_production_idx
    ON model_versions (name) WHERE stage = 'production';

-- Every change, timestamped and attributed. version is the version the action was about:
-- the one returned to for a rollback, the candidate for A/B events.
CREATE TABLE model_events (
    id       bigserial   PRIMARY KEY,
    name     text        NOT NULL,
    version  integer     NOT NULL,
    action   text        NOT NULL
        CHECK (action IN ('registered', 'promoted', 'rolled_back', 'ab_started', 'ab_stopped',
                          'archived')),
    actor    text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    detail   jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
);

CREATE INDEX model_events_name_idx ON model_events (name, id);

-- Rollback reads this history to find its target, and auditors trust it: refuse edits.
CREATE FUNCTION model_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'model_events is append-only: % is not allowed', TG_OP;
END;
$$;

CREATE TRIGGER model_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON model_events
    FOR EACH ROW EXECUTE FUNCTION model_events_append_only();

CREATE TRIGGER model_events_no_truncate
    BEFORE TRUNCATE ON model_events
    FOR EACH STATEMENT EXECUTE FUNCTION model_events_append_only();

-- What Serve should load for each model right now; the row appears with the first promotion.
-- Without an A/B split the candidate is NULL and its fraction 0.
CREATE TABLE model_serving (
    name                text             PRIMARY KEY,
    production_version  integer          NOT NULL,
    candidate_version   integer,
    candidate_fraction  double precision NOT NULL DEFAULT 0
        CHECK (candidate_fraction >= 0 AND candidate_fraction <= 1),
    updated_at          timestamptz      NOT NULL DEFAULT now(),
    updated_by          text             NOT NULL,
    FOREIGN KEY (name, production_version) REFERENCES model_versions (name, version),
    -- MATCH SIMPLE: a NULL candidate skips the check.
    FOREIGN KEY (name, candidate_version) REFERENCES model_versions (name, version),
    CHECK ((candidate_version IS NULL AND candidate_fraction = 0)
           OR (candidate_version IS NOT NULL AND candidate_fraction > 0
               AND candidate_version <> production_version))
);
