-- The per-user limit on ticket creation (TICKET_CREATIONS_PER_USER_PER_HOUR) counts a
-- seller's tickets of the last hour; this index makes that a range scan.
CREATE INDEX tickets_by_seller ON tickets (user_id, created_at);

-- One row per seller, updated at the start of every creation: on PostgreSQL the row lock
-- makes concurrent creations of one seller (on any instance) count one after the other, so
-- the limit is exact; SQLite has a single writer anyway.
CREATE TABLE sellers (
    user_id TEXT PRIMARY KEY,
    last_listed_at BIGINT NOT NULL
);
