-- 0002: durable accounting records (DESIGN.md sections 4 and 8).
--
-- Every Accounting-Request that is answered has a row here, committed before
-- the Accounting-Response is sent. Sessions, usage rollups and the local
-- spool are built on top of this table later; it is the raw, append-only log.

-- One row per accounting event. Partitioned by arrival time ("time") like
-- auth_events, so store/partitions.py creates and drops its days.
--
-- subscriber_id is 0 when the record matches no subscriber; attribution says
-- why (unknown_user, no_user_name such as Accounting-On/Off, lookup_failed
-- when the directory could not answer). Personal fields of such rows are
-- sealed under the epoch key, those of a known subscriber under the
-- subscriber's data key; the associated data binds each value to
-- (acct_records, column, id, subscriber_id).
CREATE TABLE acct_records (
    time                    timestamptz NOT NULL,
    id                      uuid        NOT NULL,
    subscriber_id           bigint      NOT NULL,
    attribution             text        NOT NULL
                            CHECK (attribution IN
                                ('subscriber', 'unknown_user', 'no_user_name', 'lookup_failed')),
    nas_id                  bigint      NOT NULL,
    -- Acct-Status-Type as sent (1 Start, 2 Stop, 3 Interim-Update, 7/8 On/Off, ...).
    status_type             bigint      NOT NULL,
    -- HMAC of (nas_id, Acct-Session-Id) under the blind-index key: joins the
    -- records of one session without holding its id. NULL when none was sent.
    session_blind           bytea,
    -- HMAC of (nas_id, packet content without Acct-Delay-Time): the
    -- idempotency key, see acct_record_keys.
    record_key              bytea       NOT NULL,
    -- Event-Timestamp when sent, else arrival minus Acct-Delay-Time.
    event_time              timestamptz NOT NULL,
    nas_event_time          timestamptz,
    delay_time              bigint      NOT NULL DEFAULT 0,
    -- 64-bit counters: octets + gigawords * 2^32.
    input_octets            bigint      CHECK (input_octets >= 0),
    output_octets           bigint      CHECK (output_octets >= 0),
    session_time            bigint,
    terminate_cause         bigint,
    nas_identifier          text,
    class                   bytea,
    session_id_enc          bytea,
    user_name_enc           bytea,
    calling_station_id_enc  bytea,
    framed_ip_enc           bytea,
    nas_ip_enc              bytea,
    PRIMARY KEY (subscriber_id, time, id)
) PARTITION BY RANGE (time);
CREATE TABLE acct_records_default PARTITION OF acct_records DEFAULT;
CREATE INDEX acct_records_session_idx ON acct_records (subscriber_id, session_blind, time);

-- Idempotency: one row per accounting event ever stored, keyed by its
-- record key (a blind index, like subscriber_lookup), so a retransmission
-- that arrives after the reply cache forgot it, or a later replay, is
-- recognised whatever subscriber or day it was stored under. A key seen
-- again with an event_time further away than the writer's duplicate window
-- is a new event with the same content (two identical Accounting-On without
-- Event-Timestamp), and is stored again. Rows are pruned by "time".
CREATE TABLE acct_record_keys (
    record_key      bytea       PRIMARY KEY,
    subscriber_id   bigint      NOT NULL,
    event_time      timestamptz NOT NULL,
    time            timestamptz NOT NULL
);
CREATE INDEX acct_record_keys_time_idx ON acct_record_keys (time);
