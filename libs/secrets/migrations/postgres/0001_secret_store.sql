-- Data keys, each wrapped (XChaCha20-Poly1305) by the master key, which is never stored here;
-- only its fingerprint is, so that a wrong master key is recognised before anything is decrypted.
CREATE TABLE secret_store_data_keys (
    version BIGINT PRIMARY KEY,
    nonce BYTEA NOT NULL,
    wrapped_key BYTEA NOT NULL,
    master_key_fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Secret material, encrypted under a data key; the reference is the associated data.
CREATE TABLE secret_store_material (
    secret_ref TEXT PRIMARY KEY,
    data_key_version BIGINT NOT NULL REFERENCES secret_store_data_keys (version),
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX secret_store_material_data_key_version ON secret_store_material (data_key_version);
