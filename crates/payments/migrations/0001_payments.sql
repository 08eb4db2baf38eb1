-- What payments knows of orders, from order events (applied with the version rule).
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    price BIGINT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Every charge taken. `succeeded`: kept, the order is paid by it. `refunding`: must not be
-- kept and its refund has not gone through yet. `refunded`: given back.
CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    charge_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    refund_id TEXT,
    created_at BIGINT NOT NULL,
    refunded_at BIGINT
);

-- At most one kept charge per order: a concurrent second one loses here and is refunded.
CREATE UNIQUE INDEX payments_one_kept_per_order ON payments (order_id) WHERE status = 'succeeded';
-- A charge is recorded once, however many requests returned it.
CREATE UNIQUE INDEX payments_charge ON payments (charge_id);
CREATE INDEX payments_by_status ON payments (status);
