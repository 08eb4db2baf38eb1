-- The order is a contract: it keeps the title, price and version of its ticket as they were
-- when it was placed. Later `ticket:updated` events change the replica, never an order.
ALTER TABLE orders ADD COLUMN ticket_title TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN ticket_price BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN ticket_version BIGINT NOT NULL DEFAULT 0;
-- Orders placed before this migration: the replica is the best record there is.
UPDATE orders SET
    ticket_title = (SELECT t.title FROM tickets t WHERE t.id = orders.ticket_id),
    ticket_price = (SELECT t.price FROM tickets t WHERE t.id = orders.ticket_id),
    ticket_version = (SELECT t.version FROM tickets t WHERE t.id = orders.ticket_id);

-- How and when an order ended: `expired` (its window passed) or `buyer` (cancelled by its
-- buyer); a payment accepted before that end still completes it (see docs/purchase-flow.md).
ALTER TABLE orders ADD COLUMN ended_at BIGINT;
ALTER TABLE orders ADD COLUMN end_reason TEXT;

-- Ticket updates that arrived ahead of their predecessor: held here (and acknowledged) and
-- applied in the transaction that applies the predecessor, instead of waiting out the bus's
-- retry backoff.
CREATE TABLE held_ticket_updates (
    ticket_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    title TEXT NOT NULL,
    price BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (ticket_id, version)
);

-- Refunds payments owes (or made) for an order's charges, from `refund:created` and
-- `refund:completed`: `pending` until the gateway confirmed it, then `refunded`.
CREATE TABLE order_refunds (
    payment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'refunded'))
);
CREATE INDEX order_refunds_by_order ON order_refunds (order_id);
