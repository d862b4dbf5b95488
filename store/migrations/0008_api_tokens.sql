-- API bearer tokens. Only the SHA-256 of each token is kept (contracts.access): a leaked
-- table lets nobody call the API. Revocation keeps the row, so the audit trail of who held
-- which token stays readable.
CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    token_sha256 bytea       NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    role         text        NOT NULL
        CHECK (role IN ('fleet_manager', 'technician', 'customer', 'ops')),
    subject      text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    label        text        NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_by   text        NOT NULL CHECK (length(created_by) BETWEEN 1 AND 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
