-- API keys (README "Security"): who may call the HTTP API, and for what.
--
-- Only a SHA-256 of each key's secret is stored: the secret is 256 random
-- bits, so a slow password hash would add nothing but latency.

CREATE TABLE api_keys (
    id          uuid        PRIMARY KEY,
    secret_hash bytea       NOT NULL CHECK (length(secret_hash) = 32),
    -- 'admin': everything; 'account': bulk transfers from, and queries on,
    -- one account.
    scope       text        NOT NULL CHECK (scope IN ('admin', 'account')),
    account_iban text       CHECK ((scope = 'account') = (account_iban IS NOT NULL)),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Servers cache verified keys; any change to a key (revocation above all)
-- tells them to forget it at once.
CREATE FUNCTION api_keys_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ledger_api_keys', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_changed
    AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify_change();

-- A TRUNCATE has no rows: an empty payload makes servers forget every key.
CREATE FUNCTION api_keys_notify_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ledger_api_keys', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_truncated
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION api_keys_notify_truncate();

-- Idempotency keys belong to the API key that sent them: two clients may
-- pick the same key without seeing each other's responses. '' is the scope
-- of requests made without authentication (LEDGER_AUTH=disabled) and of
-- keys recorded before this migration.
ALTER TABLE idempotency_keys ADD COLUMN scope text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, key);
