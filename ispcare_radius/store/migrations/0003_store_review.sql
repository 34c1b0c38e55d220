-- 0003: unique NAS addresses, and a cheap poll for subscriber changes.

-- A NAS is matched by the source address of its packets: two rows with the
-- same address (or network) would make the shared secret ambiguous.
-- NasRepository.add tells this violation apart by its name.
ALTER TABLE nas ADD CONSTRAINT nas_address_key UNIQUE (address);

-- Caches poll "SELECT id FROM subscribers WHERE updated_at > $1" every few
-- seconds to see changes made without a NOTIFY (the billing system shares
-- this database). Every writer of subscribers, ours and external ones, MUST
-- set updated_at = now() in the same UPDATE; a row changed without it stays
-- cached until the cache TTL expires. Deletes are seen through the NOTIFY
-- hint and through the lookup-row check, not through this poll.
CREATE INDEX subscribers_updated_at_idx ON subscribers (updated_at);
COMMENT ON COLUMN subscribers.updated_at IS
    'Time of the last change. Every writer MUST set updated_at = now() on UPDATE:'
    ' caches poll this column to see changes made without a NOTIFY.';
