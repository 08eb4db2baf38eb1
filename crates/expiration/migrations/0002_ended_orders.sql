-- Orders whose timer must never be (re)scheduled: cancelled, paid, or already expired.
-- Consumers handle several events at once, so an order's end can be applied before its
-- `order:created`; this record makes that late `order:created` schedule nothing.
CREATE TABLE ended_orders (
    order_id TEXT PRIMARY KEY,
    ended_at BIGINT NOT NULL
);
