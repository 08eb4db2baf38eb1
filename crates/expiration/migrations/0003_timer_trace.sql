-- The trace id (request id) of the order that scheduled the timer, carried on by the
-- `expiration:complete` it fires, so an order that lapsed is followed end to end in the logs.
ALTER TABLE timers ADD COLUMN trace_id TEXT;
