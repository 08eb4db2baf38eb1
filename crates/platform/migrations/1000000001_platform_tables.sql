-- The platform's tables in every service database: outbox, processed and parked events.
-- Versioned far above any service migration so the two sequences never collide. IF NOT
-- EXISTS because databases created before this migration existed already have the tables.
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS parked_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    parked_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
