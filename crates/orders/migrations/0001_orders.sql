-- The replica of the tickets service's tickets, applied with the version rule.
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    price BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    ticket_id TEXT NOT NULL REFERENCES tickets (id),
    status TEXT NOT NULL CHECK (status IN ('created', 'cancelled', 'awaiting:payment', 'complete')),
    expires_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Exactly one live order per ticket, enforced by the database, whichever instance inserts:
-- the loser of a race gets a unique violation, answered `Ticket is already reserved`.
CREATE UNIQUE INDEX orders_one_live_per_ticket ON orders (ticket_id) WHERE status <> 'cancelled';

CREATE INDEX orders_by_user ON orders (user_id, created_at);
