-- The write-ahead record of every charge asked of the gateway: written and committed before
-- the gateway is called, settled once it has answered. One row per idempotency key (an order
-- and a card token), so a retried request re-arms the same row instead of adding one.
-- `charging`: asked (or about to be), answer not recorded yet: a crash, a database outage or
--   a gateway outage came in between. The reconciler asks the gateway again with the same
--   idempotency key once `updated_at` is older than the grace period, and settles it.
-- `charged`: the gateway took `charge_id`, recorded in `payments` (kept or given back).
-- `declined`: the card was declined (`outcome` says why); nothing was charged.
-- `failed`: the gateway refused the request (invalid token, amount under its minimum, a
--   request it rejects); nothing was charged.
-- `token` is the client's single-use card token, kept only while `charging`, because asking
-- again with the same idempotency key must repeat the very same request; it is cleared when
-- the attempt is settled.
CREATE TABLE charge_attempts (
    idempotency_key TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    token TEXT,
    status TEXT NOT NULL,
    charge_id TEXT,
    outcome TEXT,
    tries BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX charge_attempts_unsettled ON charge_attempts (status, updated_at);
CREATE INDEX charge_attempts_by_order ON charge_attempts (order_id);
