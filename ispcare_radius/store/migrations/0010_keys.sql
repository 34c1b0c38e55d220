-- 0010: key hierarchy: KEK versions visible per wrapped key, epoch keys per
-- period, and the marker of a data-key re-encryption (DESIGN.md section 5).

-- The KEK version a system key is wrapped under, read from the wrapped
-- blob's header (format byte, then the version as uint32 big-endian; see
-- privacy/crypto.py): a generated column, so no writer can get it wrong.
ALTER TABLE system_keys ADD COLUMN kek_version integer GENERATED ALWAYS AS (
    (get_byte(wrapped, 1) << 24) | (get_byte(wrapped, 2) << 16)
    | (get_byte(wrapped, 3) << 8) | get_byte(wrapped, 4)
) STORED;

-- Keys for data not tied to a live subscriber (rejects of unknown users,
-- unattributed accounting, subscriber-0 sessions): one per calendar month
-- (UTC), named by the month ('2026-11'), with the key version YYYYMM written
-- in every blob it seals. Sealing uses the key whose period contains the
-- time; opening picks the key by the version in the blob. A key is destroyed
-- (its row deleted: crypto-shredding) once the data it sealed is past the
-- longest retention of epoch-sealed data, counted from ends_at.
CREATE TABLE epoch_keys (
    version     integer     PRIMARY KEY CHECK (version > 0),
    period      text        NOT NULL UNIQUE,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at),
    wrapped     bytea       NOT NULL,
    kek_version integer GENERATED ALWAYS AS (
        (get_byte(wrapped, 1) << 24) | (get_byte(wrapped, 2) << 16)
        | (get_byte(wrapped, 3) << 8) | get_byte(wrapped, 4)
    ) STORED,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The single epoch key of earlier versions becomes the 'legacy' period: it
-- keeps its version (1, written in its blobs) and its wrap purpose, stops
-- sealing now, and expires like any other period.
INSERT INTO epoch_keys (version, period, starts_at, ends_at, wrapped)
SELECT version, 'legacy-v' || version, created_at, greatest(now(), created_at + interval '1 second'),
       wrapped
FROM system_keys WHERE name = 'epoch';
DELETE FROM system_keys WHERE name = 'epoch';

-- Set for every subscriber when a data-key re-encryption starts and cleared,
-- in the same transaction that gives the subscriber a new data key and
-- re-seals their values: a restarted run carries on with the rows still set.
ALTER TABLE subscribers ADD COLUMN reencrypt_pending boolean NOT NULL DEFAULT false;
CREATE INDEX subscribers_reencrypt_idx ON subscribers (id) WHERE reencrypt_pending;
CREATE INDEX subscribers_kek_version_idx ON subscribers (kek_version);
