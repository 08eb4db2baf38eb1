-- The list of tickets for sale is read one page at a time, newest first, from a position
-- (created_at, id) on: this index holds exactly the tickets for sale in that order, so a page
-- reads its rows and no others, however long the list. It replaces the index on
-- (status, created_at), which could not order two tickets listed in the same millisecond.
CREATE INDEX tickets_for_sale ON tickets (created_at, id) WHERE status = 'available';
DROP INDEX tickets_by_status;

-- The title in lower case, as the title search compares it (`domain::search_key`). Computed by
-- the service, not by `lower()`, which folds ASCII letters only on SQLite; rows listed before
-- it existed are filled in when the service starts.
ALTER TABLE tickets ADD COLUMN search_title TEXT;
