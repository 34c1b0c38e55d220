-- 0006: reply policy. Plan-level IPv6 DNS and DHCPv6 address pool (RFC 6911),
-- allowed login hours and their time zone, a walled-garden profile; and per
-- subscriber: static netmask, routes, delegated prefix and IPv6 address (all
-- personal, sealed with the subscriber's data key) and overrides of plan values.
ALTER TABLE plans ADD COLUMN dns_ipv6 text[] NOT NULL DEFAULT '{}';
ALTER TABLE plans ADD COLUMN ipv6_address_pool text;
-- aaa/hours.py syntax, e.g. 'Wk0800-1800,Sa0900-1300'; NULL means any time.
ALTER TABLE plans ADD COLUMN login_hours text;
-- IANA time zone name for login_hours; NULL means UTC.
ALTER TABLE plans ADD COLUMN time_zone text;
ALTER TABLE plans ADD COLUMN walled_garden text;

ALTER TABLE subscribers ADD COLUMN framed_netmask_enc bytea;
ALTER TABLE subscribers ADD COLUMN framed_routes_enc bytea;
ALTER TABLE subscribers ADD COLUMN delegated_ipv6_enc bytea;
ALTER TABLE subscribers ADD COLUMN framed_ipv6_address_enc bytea;
-- NULL: the plan's value applies.
ALTER TABLE subscribers ADD COLUMN override_download_kbps integer
    CHECK (override_download_kbps >= 0);
ALTER TABLE subscribers ADD COLUMN override_upload_kbps integer
    CHECK (override_upload_kbps >= 0);
ALTER TABLE subscribers ADD COLUMN override_session_timeout integer
    CHECK (override_session_timeout >= 0);
ALTER TABLE subscribers ADD COLUMN override_idle_timeout integer
    CHECK (override_idle_timeout >= 0);
