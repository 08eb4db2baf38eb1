-- One timer per live order: when `fire_at` (ms since the epoch) passes, the order expires.
-- `locked_until` is the lease an instance takes while it fires the timer, so several
-- instances never fire the same timer at once; 0 means unleased.
CREATE TABLE timers (
    order_id TEXT PRIMARY KEY,
    fire_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX timers_due ON timers (fire_at);
