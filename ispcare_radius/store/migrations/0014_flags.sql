-- 0014: suspicious-login flags (DESIGN.md section 6), the detection signal of
-- each auth event, and a minimal billing outbox for flag notifications.

-- The keyed form of each login the detector saw (detect/state.py Signal):
-- 8-byte keyed digests of the account, source and MAC, a 32-bit keyed digest
-- of a wrong password bound to the account, and a location coarsened to
-- 0.1 degree. No personal value: without the blind-index key the digests
-- name nobody. The detector replays these after a restart. JSON text, not
-- jsonb: the auth-event writer COPYs in binary, and nothing queries inside it.
ALTER TABLE auth_events ADD COLUMN detect text;
ALTER TABLE auth_rejects_unknown ADD COLUMN detect text;

-- One row per rule, subject and time bucket (the unique index dedupes
-- findings: an attack that goes on raises one flag per bucket, and a flag
-- acknowledged stays acknowledged for its bucket, across restarts too).
-- subject is a keyed digest, never a value. evidence_enc is sealed with the
-- subscriber's data key (subscriber_id > 0; erasing the subscriber shreds it)
-- or the epoch key (subscriber_id = 0: a source or a MAC, no subscriber).
-- Retention deletes rows by time.
CREATE TABLE flags (
    id              bigint      GENERATED ALWAYS AS IDENTITY,
    time            timestamptz NOT NULL,
    subscriber_id   bigint      NOT NULL DEFAULT 0,
    rule            text        NOT NULL,
    severity        text        NOT NULL CHECK (severity IN ('low', 'medium', 'high')),
    score           real        NOT NULL,
    action          text        NOT NULL
                    CHECK (action IN ('log', 'flag', 'notify', 'walled_garden', 'reject')),
    subject_kind    text        NOT NULL CHECK (subject_kind IN ('account', 'source', 'mac')),
    subject         bytea       NOT NULL,
    bucket          bigint      NOT NULL,
    state           text        NOT NULL DEFAULT 'open'
                    CHECK (state IN ('open', 'acknowledged')),
    acknowledged_by text,
    acknowledged_at timestamptz,
    thresholds      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    evidence_enc    bytea       NOT NULL,
    note_enc        bytea,
    PRIMARY KEY (subscriber_id, id)
);
CREATE UNIQUE INDEX flags_once_per_bucket ON flags (rule, subject_kind, subject, bucket);
CREATE INDEX flags_id_idx ON flags (id);
CREATE INDEX flags_time_idx ON flags (time);
CREATE INDEX flags_open_idx ON flags (state, time) WHERE state = 'open';

-- The transactional outbox billing reads (DESIGN.md section 7); created here
-- in its minimal form; 0015 adds delivery state and the subscriber_id
-- (taken from the payload) that erasure deletes by.
CREATE TABLE IF NOT EXISTS feed_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text        NOT NULL,
    idempotency_key text        NOT NULL UNIQUE,
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
