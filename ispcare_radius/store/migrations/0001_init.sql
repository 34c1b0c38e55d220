-- 0001: initial schema (DESIGN.md section 4).
--
-- Written to be distributable with Citus by subscriber: large tables carry
-- subscriber_id bigint NOT NULL and every primary or unique key on them
-- includes it (and the time column when partitioned). nas, plans and
-- system_keys are small reference tables. Personal values are stored only as
-- AES-256-GCM ciphertext (columns ending in _enc); lookups go through keyed
-- blind indexes (HMAC-SHA256) in subscriber_lookup.

-- Keys wrapped by the master key (KEK), which never lives in the database.
CREATE TABLE system_keys (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    wrapped     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE nas (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE,
    address     cidr        NOT NULL,
    secret_enc  bytea       NOT NULL,
    vendor      text        NOT NULL DEFAULT 'generic',
    ma_policy   text        NOT NULL DEFAULT 'observe'
                CHECK (ma_policy IN ('no', 'observe', 'require')),
    coa_port    integer     NOT NULL DEFAULT 3799 CHECK (coa_port BETWEEN 1 AND 65535),
    latitude    double precision CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision CHECK (longitude BETWEEN -180 AND 180),
    country     text,
    city        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE plans (
    id                              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                            text    NOT NULL UNIQUE,
    download_kbps                   integer CHECK (download_kbps >= 0),
    upload_kbps                     integer CHECK (upload_kbps >= 0),
    burst_download_kbps             integer CHECK (burst_download_kbps >= 0),
    burst_upload_kbps               integer CHECK (burst_upload_kbps >= 0),
    burst_threshold_download_kbps   integer CHECK (burst_threshold_download_kbps >= 0),
    burst_threshold_upload_kbps     integer CHECK (burst_threshold_upload_kbps >= 0),
    burst_time_s                    integer CHECK (burst_time_s >= 0),
    session_timeout                 integer CHECK (session_timeout >= 0),
    idle_timeout                    integer CHECK (idle_timeout >= 0),
    interim_interval                integer CHECK (interim_interval >= 0),
    simultaneous_use                integer CHECK (simultaneous_use >= 0),
    ipv4_pool                       text,
    ipv6_pool                       text,
    -- [[attribute name, value as text], ...], sent as is.
    extra_reply                     jsonb   NOT NULL DEFAULT '[]'::jsonb,
    created_at                      timestamptz NOT NULL DEFAULT now()
);

-- Subscriber ids are reserved from this sequence before encrypting, because
-- the associated data of every encrypted field binds the row key (the id).
-- It hands out identities, not a global order.
CREATE SEQUENCE subscriber_id_seq AS bigint;

-- Distribution column: id (the subscriber id).
CREATE TABLE subscribers (
    id                  bigint      PRIMARY KEY,
    account_ref         text,
    status              text        NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'suspended', 'expired', 'deactivated')),
    plan_id             bigint      REFERENCES plans (id),
    expires_at          timestamptz,
    -- The subscriber's data key, wrapped by the KEK version kek_version.
    wrapped_key         bytea       NOT NULL,
    kek_version         integer     NOT NULL,
    data_key_version    integer     NOT NULL DEFAULT 1,
    user_name_enc       bytea       NOT NULL,
    password_enc        bytea,
    static_ipv4_enc     bytea,
    static_ipv6_enc     bytea,
    mac_lock_enc        bytea,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscribers_status_idx ON subscribers (status);
CREATE INDEX subscribers_plan_idx ON subscribers (plan_id);

-- Globally unique values, keyed by blind index: one single-shard lookup from
-- value to subscriber, then one on subscribers (distribution column: blind).
CREATE TABLE subscriber_lookup (
    kind            text    NOT NULL CHECK (kind IN ('user_name', 'mac_lock', 'static_ipv4')),
    blind           bytea   NOT NULL,
    subscriber_id   bigint  NOT NULL,
    PRIMARY KEY (kind, blind)
);
CREATE INDEX subscriber_lookup_subscriber_idx ON subscriber_lookup (subscriber_id);

-- One row per authentication decision for a known subscriber. Personal
-- fields are sealed with the subscriber's data key (row key: id).
CREATE TABLE auth_events (
    time                    timestamptz NOT NULL,
    id                      uuid        NOT NULL,
    subscriber_id           bigint      NOT NULL,
    nas_id                  bigint      NOT NULL,
    result                  text        NOT NULL,
    reason                  text        NOT NULL,
    method                  text        NOT NULL,
    flags                   text[]      NOT NULL DEFAULT '{}',
    user_name_enc           bytea,
    calling_station_id_enc  bytea,
    nas_ip_enc              bytea,
    PRIMARY KEY (subscriber_id, time, id)
) PARTITION BY RANGE (time);
-- Rows whose day has no partition yet land here, so an insert never fails;
-- ensure_partitions() moves them out when it creates their day.
CREATE TABLE auth_events_default PARTITION OF auth_events DEFAULT;

-- Rejects whose user name matches no subscriber: sealed under the epoch key,
-- short retention (partitions are dropped).
CREATE TABLE auth_rejects_unknown (
    time                    timestamptz NOT NULL,
    id                      uuid        NOT NULL,
    nas_id                  bigint      NOT NULL,
    reason                  text        NOT NULL,
    method                  text        NOT NULL,
    user_name_enc           bytea,
    calling_station_id_enc  bytea,
    nas_ip_enc              bytea,
    PRIMARY KEY (time, id)
) PARTITION BY RANGE (time);
CREATE TABLE auth_rejects_unknown_default PARTITION OF auth_rejects_unknown DEFAULT;

-- Who did what to which subscriber; never personal values (id only).
CREATE TABLE audit_log (
    time            timestamptz NOT NULL DEFAULT now(),
    id              bigint GENERATED ALWAYS AS IDENTITY,
    actor           text        NOT NULL,
    action          text        NOT NULL,
    subscriber_id   bigint,
    detail          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (time, id)
);
CREATE INDEX audit_log_subscriber_idx ON audit_log (subscriber_id, time);
