-- The event store: one append-only table for every stream.
--
-- Applied migrations are never edited: change the schema with a new file.

CREATE TABLE events (
    -- Global order of appends. Positions are handed out by a sequence, so
    -- they become visible in commit order, not always in number order; the
    -- transaction id below lets a feed read only what can no longer change.
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- One stream per account.
    stream_id      uuid        NOT NULL,
    -- 1, 2, 3, ... within the stream, gapless; the unique constraint below is
    -- the last line of defence of optimistic concurrency.
    version        bigint      NOT NULL CHECK (version > 0),
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    data           jsonb       NOT NULL,
    -- Request id, idempotency key, causation: who asked, and why.
    metadata       jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- SHA-256 over this event's content and the previous event's hash in the
    -- same stream (see src/event_store/hash.rs): any edit made behind the
    -- database's back breaks the chain.
    hash           bytea       NOT NULL CHECK (length(hash) = 32),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

CREATE INDEX events_tx_id_position_idx ON events (tx_id, position);

-- The database itself refuses to change history, whoever connects.
CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Idempotency keys, written in the same statement as the events they
-- produced, so a key is remembered exactly when its effect happened.
CREATE TABLE idempotency_keys (
    key            text        PRIMARY KEY,
    -- SHA-256 of method, path and the canonical request body.
    request_hash   bytea       NOT NULL,
    stream_id      uuid        NOT NULL,
    response_status smallint   NOT NULL,
    -- The first response, byte for byte.
    response_body  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
