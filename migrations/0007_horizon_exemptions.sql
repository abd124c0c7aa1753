-- Transactions that can never write an event, and so must not hold the
-- feed's horizon back: a rebuild's load transactions, which run for
-- seconds or minutes writing only shadow tables. A transaction registers
-- its own id here (through another connection, committed before its long
-- statements start), and from then on:
--   * events_horizon() passes over it, so the feed, the asynchronous runner
--     and the posting process go on while it runs;
--   * the events table refuses any insert from it, so passing over it can
--     never let the feed skip an event.
-- A row outlives its transaction harmlessly (transaction ids never repeat);
-- the rebuild removes its rows when it ends.
CREATE TABLE horizon_exemptions (
    tx_id       xid8        PRIMARY KEY,
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION events_refuse_exempt_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM horizon_exemptions WHERE tx_id = pg_current_xact_id()) THEN
        RAISE EXCEPTION 'this transaction is exempt from the feed horizon and cannot append events'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_no_exempt_insert
    BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_exempt_insert();

CREATE OR REPLACE FUNCTION events_horizon() RETURNS xid8
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
      AND x NOT IN (SELECT tx_id FROM horizon_exemptions)
$$;
