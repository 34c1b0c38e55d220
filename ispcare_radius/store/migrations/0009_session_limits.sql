-- 0009: sessions to disconnect, recorded by the Simultaneous-Use limiter.
--
-- Under [auth] simultaneous_use_policy = "disconnect_oldest" a login beyond
-- the plan's limit is accepted and the subscriber's oldest active session is
-- recorded here, in the limiter's transaction. The provisioning side turns
-- each pending row (handled_at IS NULL) into a Disconnect-Request (RFC 5176)
-- towards the session's NAS and then sets handled_at.
--
-- session_key is the sessions_active key (a blind index, see 0007): no
-- personal value is stored. reason is a slug: 'simultaneous_use' here; other
-- producers (quotas, operators) add their own.

CREATE TABLE disconnect_requests (
    id              bigserial   PRIMARY KEY,
    subscriber_id   bigint      NOT NULL,
    session_key     bytea       NOT NULL,
    reason          text        NOT NULL,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    handled_at      timestamptz
);
-- At most one pending request per session: a session already on its way out
-- is not asked to leave twice, and no longer holds a Simultaneous-Use slot.
CREATE UNIQUE INDEX disconnect_requests_pending_idx
    ON disconnect_requests (session_key) WHERE handled_at IS NULL;
CREATE INDEX disconnect_requests_subscriber_idx
    ON disconnect_requests (subscriber_id, requested_at);
