-- What the projection engine knows about each read model: how it is kept,
-- and when it was last rebuilt from the log.
CREATE TABLE projection_status (
    name               text        PRIMARY KEY,
    mode               text        NOT NULL CHECK (mode IN ('inline', 'async')),
    -- For asynchronous projections: the feed cursor applied so far.
    checkpoint_tx      bigint      NOT NULL DEFAULT 0,
    checkpoint_position bigint     NOT NULL DEFAULT 0,
    rebuilt_at         timestamptz,
    rebuild_events     bigint,
    rebuild_seconds    double precision,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
