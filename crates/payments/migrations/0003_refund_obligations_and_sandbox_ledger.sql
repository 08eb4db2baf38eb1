-- When `POST /api/payments` accepted the payment: its charge attempt was first written down
-- (always before the order's `expiresAt`). Orders lets a payment accepted in time win.
ALTER TABLE payments ADD COLUMN accepted_at BIGINT;
-- A refund owed (`refunding`) is an obligation: retried with backoff until the gateway
-- confirms it, across restarts, never parked. `refund_next_at` is when it is next due (also
-- the lease of the instance asking), `refund_tries` how often the gateway failed it.
ALTER TABLE payments ADD COLUMN refund_tries BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN refund_next_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN refund_error TEXT;

-- The sandbox gateway's ledger, like Stripe's: every charge, its refund, and the first answer
-- to each idempotency key, so a restarted (or another) instance knows every charge.
CREATE TABLE sandbox_charges (
    id TEXT PRIMARY KEY,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    order_id TEXT NOT NULL,
    token TEXT NOT NULL,
    refund_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX sandbox_charges_by_order ON sandbox_charges (order_id);

-- `request` is what the key was first used with; `charge_id`/`refund_id` the answer, or
-- `declined` the decline message (a key keeps its decline too).
CREATE TABLE sandbox_idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    charge_id TEXT,
    refund_id TEXT,
    declined TEXT,
    created_at BIGINT NOT NULL
);
