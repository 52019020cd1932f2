-- Secret material whose records are gone, queued in the same transaction that removed the
-- last reference, until the secret store has destroyed it.
CREATE TABLE secret_garbage (
    secret_ref TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    queued_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0
);
