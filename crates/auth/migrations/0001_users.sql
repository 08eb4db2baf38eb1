-- Emails are stored trimmed and lower-cased, so the unique index makes them unique
-- case-insensitively on both engines.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
