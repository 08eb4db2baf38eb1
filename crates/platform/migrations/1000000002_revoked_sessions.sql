-- Sessions revoked before their expiry (sign-out): every service that authenticates requests
-- keeps its own copy, fed by `session:revoked` events (auth writes its own directly), and
-- refuses a token whose `jti` is here. Rows go once the token has expired anyway.
CREATE TABLE IF NOT EXISTS revoked_sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_sessions_by_expiry ON revoked_sessions (expires_at);
