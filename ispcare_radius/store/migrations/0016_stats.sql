-- 0016: released anonymised statistics (DESIGN.md section 7).
--
-- stats_hourly holds only cells that passed the release validator
-- (privacy/anon_check.py): one row per period, bucket, dimension and
-- category value, with at least k distinct subscribers behind it, measures
-- capped per subscriber, and no identifier, digest, address or exact time in
-- any column. The bucket is the start of the hour (or UTC day): the finest
-- time it holds. The CHECKs are a backstop for writers other than the
-- release command; k itself (>= 5) is the validator's.
CREATE TABLE stats_hourly (
    period      text        NOT NULL CHECK (period IN ('hour', 'day')),
    bucket      timestamptz NOT NULL
                CHECK (extract(epoch FROM bucket)::bigint % 3600 = 0),
    dimension   text        NOT NULL
                CHECK (dimension IN ('country', 'city', 'device_class', 'os_family',
                                     'plan', 'nas_group', 'nas_port_type')),
    value       text        NOT NULL CHECK (length(value) BETWEEN 1 AND 80),
    sessions    bigint      NOT NULL CHECK (sessions >= 0),
    subscribers integer     NOT NULL CHECK (subscribers >= 5),
    bytes_in    bigint      NOT NULL CHECK (bytes_in >= 0),
    bytes_out   bigint      NOT NULL CHECK (bytes_out >= 0),
    seconds     bigint      NOT NULL CHECK (seconds >= 0),
    PRIMARY KEY (period, bucket, dimension, value)
);

-- One row per released period: a period is released once (re-running the
-- release is a no-op), and the k it was released under is kept with it.
CREATE TABLE stats_releases (
    period      text        NOT NULL CHECK (period IN ('hour', 'day')),
    bucket      timestamptz NOT NULL,
    k           integer     NOT NULL CHECK (k >= 5),
    cells       integer     NOT NULL,
    suppressed  integer     NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (period, bucket)
);

-- The NAS group statistics are rolled up by; NULL falls back to the vendor.
ALTER TABLE nas ADD COLUMN IF NOT EXISTS nas_group text;
