-- 0013: where logins come from and what devices make them, as categories.
--
-- nas.nas_type says which IP a login comes from (detect/location.py):
-- 'pppoe' (any fixed line: the NAS location is the subscriber's), 'hotspot'
-- and 'vpn' (a public client IP in the request is geolocated). nas.pools are
-- the NAS's own address pools: client IPs in them are never geolocated.
--
-- auth_events gains the analytics-only categories derived at login: country
-- (ISO 3166-1 alpha-2), city, device class, OS family and the registered
-- manufacturer of the MAC's prefix. None of them identifies a subscriber or
-- a device, so they are stored in clear; the IP and MAC they came from stay
-- in the sealed columns only.

ALTER TABLE nas
    ADD COLUMN nas_type text NOT NULL DEFAULT 'pppoe'
        CHECK (nas_type IN ('pppoe', 'hotspot', 'vpn')),
    ADD COLUMN pools cidr[] NOT NULL DEFAULT '{}';

ALTER TABLE auth_events
    ADD COLUMN country      text,
    ADD COLUMN city         text,
    ADD COLUMN device_class text,
    ADD COLUMN os_family    text,
    ADD COLUMN vendor       text;
