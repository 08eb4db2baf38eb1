-- When a timer ended (ms since the epoch), so retention can delete ended timers once they are
-- old: an ended row must outlive any late `order:created` of its order (see 0002). Rows ended
-- before this column existed have NULL and are aged by `fire_at`.
ALTER TABLE timers ADD COLUMN ended_at BIGINT;
