-- The timer loop only ever looks at scheduled timers (which are due, which is next), while ended
-- rows pile up until retention deletes them: index only the scheduled ones, so each round reads
-- the live orders' timers, not every order's.
DROP INDEX timers_due;
CREATE INDEX timers_scheduled ON timers (fire_at) WHERE status = 'scheduled';
