-- Retention deletes processed-event ids by age (platform::retention).
CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (processed_at);
