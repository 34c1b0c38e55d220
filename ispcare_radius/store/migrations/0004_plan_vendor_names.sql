-- Names a plan hands to vendor profiles: the address list a MikroTik puts the
-- subscriber in, and the QoS profile / policy-map base name for Juniper ERX,
-- Cisco and Huawei (see docs/vendors.md).
ALTER TABLE plans ADD COLUMN address_list text;
ALTER TABLE plans ADD COLUMN qos_profile text;
