-- A timer row outlives its timer: `ended` once the order was cancelled, paid or expired.
-- Consumers apply several events at once, so an order's end can be applied before (or
-- concurrently with) its `order:created`. Both write this one row, keyed by the order, so the
-- database orders them: a late `order:created` finds the row ended and schedules nothing.
ALTER TABLE timers ADD COLUMN status TEXT NOT NULL DEFAULT 'scheduled';
