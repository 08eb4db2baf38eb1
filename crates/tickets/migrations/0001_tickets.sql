-- Tickets are owned here. `order_id` is the order holding the ticket (reserved, or sold for
-- good); a ticket is listed only while `status = 'available'` and editable only while
-- `order_id IS NULL`.
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    price BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    order_id TEXT,
    status TEXT NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'reserved', 'sold')),
    created_at BIGINT NOT NULL
);

CREATE INDEX tickets_by_status ON tickets (status, created_at);

-- The replica of the orders service's orders, applied with the version rule, so that events
-- about one order are applied in the order they happened whatever order they arrive in.
CREATE TABLE known_orders (
    id TEXT PRIMARY KEY,
    ticket_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    status TEXT NOT NULL
);
