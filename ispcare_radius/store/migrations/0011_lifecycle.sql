-- 0011: the personal-data lifecycle: deactivation time, legal hold, erasure tombstones.
--
-- DESIGN.md section 2: data is kept while the subscriber is active;
-- deactivation ends access at once and, after a grace period, the erasure
-- job (store/lifecycle.py) destroys the subscriber's data key and deletes
-- their personal rows, unless a legal hold is set.

-- When the subscriber was deactivated; NULL while not deactivated. The
-- erasure grace counts from the later of deactivated_at and updated_at, so a
-- writer that deactivates without setting it (the billing system's own SQL)
-- still gets the full grace from its change, and a subscriber reactivated and
-- deactivated again by such a writer does not inherit an old deactivated_at.
ALTER TABLE subscribers ADD COLUMN deactivated_at timestamptz;
-- Set by an operator under a legal obligation to preserve: blocks erasure.
ALTER TABLE subscribers ADD COLUMN legal_hold boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN subscribers.deactivated_at IS
    'When status became deactivated (NULL otherwise). Writers that set status SHOULD set it;'
    ' the erasure grace counts from GREATEST(deactivated_at, updated_at).';
COMMENT ON COLUMN subscribers.legal_hold IS
    'True blocks erasure of a deactivated subscriber (legal preservation duty).';

-- Subscribers deactivated before this migration: their grace starts at their
-- last change, never earlier.
UPDATE subscribers SET deactivated_at = updated_at WHERE status = 'deactivated';

-- The erasure job's candidates, found without scanning every subscriber.
CREATE INDEX subscribers_deactivated_idx ON subscribers (deactivated_at)
    WHERE status = 'deactivated';

-- What is left of an erased subscriber: the id (which keys the pseudonymous
-- usage totals and the counters of closed sessions that billing may still
-- need) and the billing system's account reference (its own key for the
-- customer; not a value the privacy policy lists as personal, and without it
-- the kept totals could not be invoiced). The subscribers row itself is
-- deleted, so every reader of subscribers keeps seeing an erased subscriber
-- as gone. Distribution column: subscriber_id.
CREATE TABLE erased_subscribers (
    subscriber_id   bigint      PRIMARY KEY,
    account_ref     text,
    deactivated_at  timestamptz,
    erased_at       timestamptz NOT NULL
);
