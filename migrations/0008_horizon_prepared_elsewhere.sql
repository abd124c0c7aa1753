-- The feed's horizon is not held back by a prepared transaction of another
-- database (issue #15, item 6). A transaction prepared for two-phase commit
-- stays in every snapshot until someone commits or rolls it back — an
-- orphan (its coordinator gone) stays for ever. One in another database can
-- never insert into this database's events, so, like the running
-- transactions of other databases (0003), it is passed over. One in this
-- database still holds the horizon: it may have appended events that
-- become visible when it commits.
CREATE OR REPLACE FUNCTION events_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    WITH snap AS (
        SELECT pg_current_snapshot() AS s
    ), elsewhere AS (
        SELECT a.backend_xid AS xid
        FROM pg_stat_activity AS a
        WHERE a.backend_xid IS NOT NULL
          AND a.datid IS DISTINCT FROM (SELECT oid FROM pg_database WHERE datname = current_database())
        UNION ALL
        SELECT p.transaction
        FROM pg_prepared_xacts AS p
        WHERE p.database IS DISTINCT FROM current_database()
    )
    SELECT coalesce(min(x), pg_snapshot_xmax((SELECT s FROM snap)))
    FROM pg_snapshot_xip((SELECT s FROM snap)) AS x
    WHERE (x::text::bigint % 4294967296)::text::xid NOT IN (SELECT xid FROM elsewhere)
      AND x NOT IN (SELECT tx_id FROM horizon_exemptions)
$$;
