-- 0015: feeds to billing (DESIGN.md section 7): the transactional outbox
-- grows delivery state, usage gains hourly rows and a session count, and two
-- views let a billing system read usage and events directly.
--
-- Every change billing must know about (a usage row moved, a quota crossed,
-- a flag raised, a subscriber's status changed, released statistics) is
-- written to feed_outbox in the transaction that makes the change, under an
-- idempotency key unique per change. A relay (store/feeds.py) drains it per
-- sink with FOR UPDATE SKIP LOCKED; NOTIFY feed_outbox is only a wake-up
-- hint. Rows of one account_key go out in id order: a later event of an
-- account is not delivered to a sink while an earlier one is still pending
-- there.

-- account_key orders delivery: the subscriber's account_ref (the billing
-- system's own key), else 'subscriber:<id>'; NULL for rows of no account
-- (statistics). Never a user name or an address.
-- Per sink (webhook, ndjson): attempts made, when the next may be made,
-- when it was delivered, when it was given up on (dead letter), and the
-- class of the last error (an error class, never a message or a value).
-- subscriber_id (from the payload; NULL for none) lets an erasure delete the
-- subscriber's rows, delivered or not (store/lifecycle.py).
ALTER TABLE feed_outbox
    ADD COLUMN account_key              text,
    ADD COLUMN subscriber_id            bigint,
    ADD COLUMN webhook_attempts         integer     NOT NULL DEFAULT 0,
    ADD COLUMN webhook_next_attempt_at  timestamptz,
    ADD COLUMN webhook_delivered_at     timestamptz,
    ADD COLUMN webhook_dead_at          timestamptz,
    ADD COLUMN webhook_last_error       text,
    ADD COLUMN ndjson_attempts          integer     NOT NULL DEFAULT 0,
    ADD COLUMN ndjson_next_attempt_at   timestamptz,
    ADD COLUMN ndjson_delivered_at      timestamptz,
    ADD COLUMN ndjson_dead_at           timestamptz,
    ADD COLUMN ndjson_last_error        text;

-- The rows still to deliver to each sink, small once the relay keeps up.
CREATE INDEX feed_outbox_webhook_pending ON feed_outbox (id)
    WHERE webhook_delivered_at IS NULL AND webhook_dead_at IS NULL;
CREATE INDEX feed_outbox_ndjson_pending ON feed_outbox (id)
    WHERE ndjson_delivered_at IS NULL AND ndjson_dead_at IS NULL;
CREATE INDEX feed_outbox_webhook_account ON feed_outbox (account_key, id)
    WHERE webhook_delivered_at IS NULL AND webhook_dead_at IS NULL;
CREATE INDEX feed_outbox_ndjson_account ON feed_outbox (account_key, id)
    WHERE ndjson_delivered_at IS NULL AND ndjson_dead_at IS NULL;
CREATE INDEX feed_outbox_created_idx ON feed_outbox (created_at);
CREATE INDEX feed_outbox_subscriber_idx ON feed_outbox (subscriber_id)
    WHERE subscriber_id IS NOT NULL;

-- subscriber_id comes from the payload's; a writer that does not name the
-- account (the flag writer) gets the subscriber's. Subscriber 0 (no
-- subscriber) has neither.
CREATE FUNCTION feed_outbox_account_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sid bigint;
BEGIN
    IF jsonb_typeof(NEW.payload -> 'subscriber_id') = 'number' THEN
        sid := (NEW.payload ->> 'subscriber_id')::bigint;
        IF sid > 0 THEN
            NEW.subscriber_id := coalesce(NEW.subscriber_id, sid);
            IF NEW.account_key IS NULL THEN
                SELECT coalesce(s.account_ref, 'subscriber:' || s.id) INTO NEW.account_key
                FROM subscribers s WHERE s.id = sid;
                NEW.account_key := coalesce(NEW.account_key, 'subscriber:' || sid);
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER feed_outbox_account_key BEFORE INSERT ON feed_outbox
    FOR EACH ROW EXECUTE FUNCTION feed_outbox_account_key();

-- The wake-up hint, sent when the inserting transaction commits (PostgreSQL
-- folds identical notifications of one transaction into one).
CREATE FUNCTION feed_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('feed_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER feed_outbox_notify AFTER INSERT ON feed_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION feed_outbox_notify();

-- Usage: sessions started in the period (a session counts once, in the
-- period its start falls in; a session seen first in an Interim or Stop
-- counts from the start that record implies), and a version raised by every
-- change: the idempotency key of the change's outbox row, stable if the
-- transaction is retried (a rolled-back change raised nothing).
ALTER TABLE usage
    ADD COLUMN sessions bigint NOT NULL DEFAULT 0,
    ADD COLUMN version  bigint NOT NULL DEFAULT 1;

-- Hourly usage (UTC hours). A table of its own rather than an 'hour' period
-- of usage: usage.period_start is a date, and the quota rules read day and
-- cycle rows only.
CREATE TABLE usage_hourly (
    subscriber_id   bigint      NOT NULL,
    hour_start      timestamptz NOT NULL CHECK (date_trunc('hour', hour_start) = hour_start),
    input_octets    bigint      NOT NULL DEFAULT 0,
    output_octets   bigint      NOT NULL DEFAULT 0,
    session_time    bigint      NOT NULL DEFAULT 0,
    sessions        bigint      NOT NULL DEFAULT 0,
    version         bigint      NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, hour_start)
);
CREATE INDEX usage_hourly_hour_idx ON usage_hourly (hour_start);

-- Usage per billing account, period and period start, summed over the
-- account's subscribers; period_start is a UTC time (midnight for day and
-- cycle rows).
CREATE VIEW feed_usage AS
SELECT coalesce(s.account_ref, 'subscriber:' || u.subscriber_id) AS account_key,
       s.account_ref,
       u.period,
       u.period_start,
       sum(u.input_octets)::bigint AS input_octets,
       sum(u.output_octets)::bigint AS output_octets,
       sum(u.session_time)::bigint AS session_time,
       sum(u.sessions)::bigint AS sessions,
       max(u.updated_at) AS updated_at
FROM (
    SELECT subscriber_id, 'hour'::text AS period, hour_start AS period_start, input_octets,
           output_octets, session_time, sessions, updated_at
    FROM usage_hourly
    UNION ALL
    SELECT subscriber_id, period, (period_start::timestamp AT TIME ZONE 'UTC'), input_octets,
           output_octets, session_time, sessions, updated_at
    FROM usage
) u
LEFT JOIN subscribers s ON s.id = u.subscriber_id
GROUP BY 1, 2, 3, 4;

-- Every event but usage (quota crossings, flags, status changes, statistics)
-- as written to the outbox, in order.
CREATE VIEW feed_events AS
SELECT id, topic, idempotency_key, account_key, payload, created_at
FROM feed_outbox
WHERE topic <> 'usage';
