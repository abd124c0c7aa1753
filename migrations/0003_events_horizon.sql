-- The commit-safe horizon of the events feed.
--
-- Events are read in (tx_id, position) order, and only those written by
-- transactions below the horizon: every transaction below it has finished,
-- so no event can ever appear there again. The horizon is the oldest
-- transaction still running in the caller's snapshot — ignoring those that
-- are certainly running in another database of the cluster (they cannot
-- write this database's events, and must not stall its feed). A transaction
-- that cannot be placed (it has already ended, or its row is hidden from
-- this role) counts: the horizon errs on the side of waiting.
--
-- STABLE: it sees the calling statement's snapshot, so the horizon and the
-- events read with it come from the same instant.
CREATE FUNCTION events_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    WITH snap AS (
        SELECT pg_current_snapshot() AS s
    ), elsewhere AS (
        SELECT a.backend_xid
        FROM pg_stat_activity AS a
        WHERE a.backend_xid IS NOT NULL
          AND a.datid IS DISTINCT FROM (SELECT oid FROM pg_database WHERE datname = current_database())
    )
    SELECT coalesce(min(x), pg_snapshot_xmax((SELECT s FROM snap)))
    FROM pg_snapshot_xip((SELECT s FROM snap)) AS x
    WHERE (x::text::bigint % 4294967296)::text::xid NOT IN (SELECT backend_xid FROM elsewhere)
$$;
