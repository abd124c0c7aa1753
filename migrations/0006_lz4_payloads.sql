-- Large values compress with lz4 rather than pglz. A bulk's payload (a few
-- hundred bytes per transfer) and its recorded answer pass PostgreSQL's
-- TOAST threshold and are compressed on every append: with pglz that was
-- ~10 % of the appending backend's CPU under bulks of 100 (perf), lz4
-- compresses several times faster for a similar ratio. Only values written
-- from now on change; reading either kind is transparent.
--
-- A server built without lz4 (it is optional at PostgreSQL's build time)
-- keeps pglz: the ledger works the same, only slower.
DO $$
BEGIN
    ALTER TABLE events ALTER COLUMN data SET COMPRESSION lz4;
    ALTER TABLE events ALTER COLUMN metadata SET COMPRESSION lz4;
    ALTER TABLE idempotency_keys ALTER COLUMN response_body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available in this PostgreSQL build; payloads stay pglz-compressed';
END
$$;
