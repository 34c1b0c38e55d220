-- 0005: MAC authentication: devices bound to subscribers, and a blocked-MAC list.
--
-- A device MAC is globally unique: its full-length blind index (HMAC-SHA256,
-- domain 'device_mac', over the 6 normalised bytes) is a subscriber_lookup
-- row, giving the usual two single-shard lookups (blind -> subscriber, then
-- the subscriber's devices). The MAC itself is stored only sealed with the
-- subscriber's data key, in the form it was registered in (NAS vendors differ
-- in notation, and a CoA towards the NAS may need that form back).

ALTER TABLE subscriber_lookup DROP CONSTRAINT subscriber_lookup_kind_check;
ALTER TABLE subscriber_lookup ADD CONSTRAINT subscriber_lookup_kind_check
    CHECK (kind IN ('user_name', 'mac_lock', 'static_ipv4', 'device_mac'));

-- Distribution column: subscriber_id. Erasing a subscriber erases their devices.
CREATE TABLE devices (
    subscriber_id   bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    id              uuid        NOT NULL,
    mac_blind       bytea       NOT NULL,
    -- Sealed with the subscriber's data key; associated data binds
    -- (devices, mac, id, subscriber_id).
    mac_enc         bytea       NOT NULL,
    first_seen      timestamptz,
    last_seen       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, id),
    UNIQUE (subscriber_id, mac_blind)
);

-- MACs refused whatever the method (MAC auth, or PAP/CHAP from that
-- Calling-Station-Id). A small reference table: no subscriber, blind only.
CREATE TABLE blocked_macs (
    mac_blind   bytea       PRIMARY KEY,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
