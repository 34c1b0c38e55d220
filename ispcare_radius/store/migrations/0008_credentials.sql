-- 0008: credential forms and MAC binding.
--
-- A subscriber may hold, instead of the reversible password, only an NT hash
-- (16 bytes, MD4 of the UTF-16LE password: MS-CHAPv1/v2 and PAP work) or only
-- a slow hash (the text '$scrypt$n=..,r=..,p=..$salt$hash': PAP only). Both
-- are personal and sealed with the subscriber's data key like password_enc
-- (associated data: subscribers, nt_hash / slow_hash, id, id).
ALTER TABLE subscribers ADD COLUMN nt_hash_enc bytea;
ALTER TABLE subscribers ADD COLUMN slow_hash_enc bytea;

-- How mac_lock_enc is set: 'off' (no lock), 'lock' (an operator set it),
-- 'first_login' (the first accepted login's Calling-Station-Id becomes the
-- lock: bound by one UPDATE ... WHERE mac_lock_enc IS NULL, so two first
-- logins from different MACs cannot both bind; NULL lock = not bound yet).
ALTER TABLE subscribers ADD COLUMN mac_binding text NOT NULL DEFAULT 'off';
-- Rows locked before this migration were locked by an operator.
UPDATE subscribers SET mac_binding = 'lock' WHERE mac_lock_enc IS NOT NULL;
ALTER TABLE subscribers ADD CONSTRAINT subscribers_mac_binding_check CHECK (
    (mac_binding = 'off' AND mac_lock_enc IS NULL)
    OR (mac_binding = 'lock' AND mac_lock_enc IS NOT NULL)
    OR mac_binding = 'first_login'
);
