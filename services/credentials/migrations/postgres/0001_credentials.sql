CREATE TABLE credentials (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    provider TEXT NOT NULL,
    labels TEXT NOT NULL,
    expire_time BIGINT,
    rotation_period_secs BIGINT NOT NULL,
    retained_versions BIGINT NOT NULL,
    allowed_subjects TEXT NOT NULL,
    state TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    delete_time BIGINT,
    purge_time BIGINT,
    next_rotation_time BIGINT,
    revision BIGINT NOT NULL,
    request_id TEXT,
    PRIMARY KEY (tenant, id)
);
CREATE UNIQUE INDEX credentials_request_id ON credentials (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX credentials_expiry ON credentials (tenant, expire_time) WHERE expire_time IS NOT NULL;
CREATE INDEX credentials_rotation_due ON credentials (next_rotation_time) WHERE next_rotation_time IS NOT NULL;
CREATE INDEX credentials_purge_due ON credentials (purge_time) WHERE purge_time IS NOT NULL;

CREATE TABLE credential_labels (
    tenant TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tenant, credential_id, key),
    FOREIGN KEY (tenant, credential_id) REFERENCES credentials (tenant, id) ON DELETE CASCADE
);
CREATE INDEX credential_labels_by_value ON credential_labels (tenant, key, value);

CREATE TABLE credential_versions (
    tenant TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    origin TEXT NOT NULL,
    secret_ref TEXT,
    create_time BIGINT NOT NULL,
    destroy_time BIGINT,
    request_id TEXT,
    PRIMARY KEY (tenant, credential_id, version),
    FOREIGN KEY (tenant, credential_id) REFERENCES credentials (tenant, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX credential_versions_request_id ON credential_versions (tenant, credential_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE audit_events (
    tenant TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    time BIGINT NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    result_code TEXT NOT NULL,
    detail TEXT NOT NULL,
    request_id TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant, sequence)
);
CREATE INDEX audit_events_by_resource ON audit_events (tenant, resource);
CREATE INDEX audit_events_by_time ON audit_events (tenant, time);
