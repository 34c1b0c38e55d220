-- 0007: sessions, usage and quotas derived from accounting (DESIGN.md sections 4 and 8).
--
-- acct_records stays the raw, append-only log and the only thing on the
-- acknowledgement path. The statement that stores a record also queues it in
-- acct_pending; a session applier takes queued records in large batches
-- (FOR UPDATE SKIP LOCKED, so several processes can share the work), applies
-- them to the tables below and dequeues them in the same transaction, so
-- each stored record moves a session's counters exactly once, and a crash
-- between the two leaves the record queued, not lost.
--
-- session_key is a blind index (HMAC under the blind-index key): of the
-- server-made Class cookie when the NAS echoes it, else of (NAS,
-- Acct-Session-Id, NAS-Port, NAS-Port-Id, User-Name). A session's id is the
-- id of the accounting record that created it, and its sealed columns are
-- that record's ciphertexts, copied: associated data ("acct_records",
-- column, id, subscriber_id) still binds them to one row and subscriber.

-- What the applier needs from a record without decrypting anything.
ALTER TABLE acct_records
    ADD COLUMN session_key        bytea,
    ADD COLUMN port_blind         bytea,
    ADD COLUMN framed_ip_blind    bytea,
    ADD COLUMN framed_ipv6_blind  bytea,
    ADD COLUMN nas_port_type      bigint,
    ADD COLUMN gigawords          boolean NOT NULL DEFAULT false,
    ADD COLUMN has_cookie         boolean NOT NULL DEFAULT false,
    ADD COLUMN framed_ipv6_enc    bytea;

-- Records of one session are found through sessions now, so the raw log
-- needs no index of its own for them (one index fewer per stored record).
DROP INDEX acct_records_session_idx;

-- Records stored but not yet applied to sessions (normally for milliseconds).
CREATE TABLE acct_pending (
    id              uuid        PRIMARY KEY,
    subscriber_id   bigint      NOT NULL,
    time            timestamptz NOT NULL
);
CREATE INDEX acct_pending_time_idx ON acct_pending (time);

CREATE TABLE sessions_active (
    id                      uuid        NOT NULL,
    subscriber_id           bigint      NOT NULL,
    session_key             bytea       NOT NULL,
    nas_id                  bigint      NOT NULL,
    -- Blind indexes: (NAS, Acct-Session-Id), (NAS, NAS-Port, NAS-Port-Id),
    -- and the framed IPv4 address / IPv6 prefix (for "who had IP X").
    session_blind           bytea,
    port_blind              bytea,
    framed_ip_blind         bytea,
    framed_ipv6_blind       bytea,
    nas_port_type           bigint,
    -- Event times (Event-Timestamp, else arrival minus Acct-Delay-Time).
    started_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    -- Arrival time of the last record applied: the stale-session clock.
    last_seen               timestamptz NOT NULL,
    -- False when the session was created by an Interim or Stop (Start lost).
    start_seen              boolean     NOT NULL,
    interim_interval        integer,
    -- 64-bit totals, and what the NAS last sent of each (low 32 bits when it
    -- sends no Gigawords) with the wraps detected so far.
    input_octets            bigint      NOT NULL DEFAULT 0 CHECK (input_octets >= 0),
    output_octets           bigint      NOT NULL DEFAULT 0 CHECK (output_octets >= 0),
    input_wraps             integer     NOT NULL DEFAULT 0,
    output_wraps            integer     NOT NULL DEFAULT 0,
    session_time            bigint      NOT NULL DEFAULT 0,
    -- Event time of the record the counters come from (order tolerance).
    counters_at             timestamptz,
    session_id_enc          bytea,
    user_name_enc           bytea,
    calling_station_id_enc  bytea,
    framed_ip_enc           bytea,
    framed_ipv6_enc         bytea,
    nas_ip_enc              bytea,
    PRIMARY KEY (subscriber_id, session_key)
);
-- Single-table lookups by key, NAS session id, port and NAS: a session's
-- records may be attributed differently (a lookup that failed once). No
-- index covers a column an Interim changes (times, counters), and pages keep
-- free space (fillfactor), so the update per Interim is a HOT update that
-- touches no index; the stale-session job scans this small table instead.
ALTER TABLE sessions_active SET (fillfactor = 70);
CREATE UNIQUE INDEX sessions_active_key_idx ON sessions_active (session_key);
CREATE INDEX sessions_active_session_idx ON sessions_active (session_blind);
CREATE INDEX sessions_active_port_idx ON sessions_active (port_blind) WHERE port_blind IS NOT NULL;
CREATE INDEX sessions_active_nas_idx ON sessions_active (nas_id);
CREATE INDEX sessions_active_ip_idx ON sessions_active (framed_ip_blind)
    WHERE framed_ip_blind IS NOT NULL;
CREATE INDEX sessions_active_ipv6_idx ON sessions_active (framed_ipv6_blind)
    WHERE framed_ipv6_blind IS NOT NULL;

CREATE TABLE sessions_closed (
    id                      uuid        NOT NULL,
    subscriber_id           bigint      NOT NULL,
    session_key             bytea       NOT NULL,
    nas_id                  bigint      NOT NULL,
    session_blind           bytea,
    port_blind              bytea,
    framed_ip_blind         bytea,
    framed_ipv6_blind       bytea,
    nas_port_type           bigint,
    started_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    last_seen               timestamptz NOT NULL,
    start_seen              boolean     NOT NULL,
    interim_interval        integer,
    input_octets            bigint      NOT NULL DEFAULT 0,
    output_octets           bigint      NOT NULL DEFAULT 0,
    input_wraps             integer     NOT NULL DEFAULT 0,
    output_wraps            integer     NOT NULL DEFAULT 0,
    session_time            bigint      NOT NULL DEFAULT 0,
    counters_at             timestamptz,
    session_id_enc          bytea,
    user_name_enc           bytea,
    calling_station_id_enc  bytea,
    framed_ip_enc           bytea,
    framed_ipv6_enc         bytea,
    nas_ip_enc              bytea,
    -- When the session ended (event time) and when the server closed it.
    stopped_at              timestamptz NOT NULL,
    closed_at               timestamptz NOT NULL DEFAULT now(),
    -- stop (Acct-Status-Type Stop), nas_reboot (Accounting-On/Off),
    -- superseded (a new Start on its port or NAS session id), stale (no
    -- record for 2 x interim interval + grace), admin (closed by an operator).
    close_reason            text        NOT NULL
                            CHECK (close_reason IN ('stop', 'nas_reboot', 'superseded', 'stale', 'admin')),
    terminate_cause         bigint,
    PRIMARY KEY (subscriber_id, stopped_at, id)
) PARTITION BY RANGE (stopped_at);
CREATE TABLE sessions_closed_default PARTITION OF sessions_closed DEFAULT;
CREATE INDEX sessions_closed_key_idx ON sessions_closed (session_key);
CREATE INDEX sessions_closed_id_idx ON sessions_closed (id);
CREATE INDEX sessions_closed_ip_idx ON sessions_closed (framed_ip_blind, stopped_at)
    WHERE framed_ip_blind IS NOT NULL;
CREATE INDEX sessions_closed_ipv6_idx ON sessions_closed (framed_ipv6_blind, stopped_at)
    WHERE framed_ipv6_blind IS NOT NULL;
CREATE INDEX sessions_closed_subscriber_idx ON sessions_closed (subscriber_id, stopped_at);

-- Accepted logins not yet seen in accounting, for Simultaneous-Use: the
-- Access-Accept's Class cookie (blind) until its Start arrives or it expires.
CREATE TABLE session_reservations (
    subscriber_id   bigint      NOT NULL,
    session_key     bytea       NOT NULL,
    nas_id          bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (subscriber_id, session_key)
);
CREATE INDEX session_reservations_expiry_idx ON session_reservations (expires_at);

-- Usage per subscriber per period, kept current from interims. period is
-- 'day' (UTC day) or 'cycle' (the plan's billing cycle, starting on
-- plans.billing_day); period_start is the first day.
CREATE TABLE usage (
    subscriber_id   bigint      NOT NULL,
    period          text        NOT NULL CHECK (period IN ('day', 'cycle')),
    period_start    date        NOT NULL,
    input_octets    bigint      NOT NULL DEFAULT 0,
    output_octets   bigint      NOT NULL DEFAULT 0,
    session_time    bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, period, period_start)
);

-- A quota crossed: one row per subscriber, period and kind. The provisioning
-- side turns these into CoA or Disconnect; handled_at marks that.
CREATE TABLE quota_events (
    subscriber_id   bigint      NOT NULL,
    period          text        NOT NULL CHECK (period IN ('day', 'cycle')),
    period_start    date        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('bytes', 'time')),
    time            timestamptz NOT NULL DEFAULT now(),
    used            bigint      NOT NULL,
    quota           bigint      NOT NULL,
    handled_at      timestamptz,
    PRIMARY KEY (subscriber_id, period, period_start, kind)
);

ALTER TABLE plans
    ADD COLUMN quota_bytes   bigint   CHECK (quota_bytes > 0),
    ADD COLUMN quota_seconds bigint   CHECK (quota_seconds > 0),
    ADD COLUMN quota_period  text     NOT NULL DEFAULT 'cycle' CHECK (quota_period IN ('day', 'cycle')),
    ADD COLUMN billing_day   smallint NOT NULL DEFAULT 1 CHECK (billing_day BETWEEN 1 AND 28);
