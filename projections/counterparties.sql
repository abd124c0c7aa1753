-- Projection `counterparties`: who each account pays — per account and
-- payee IBAN, how many transfers, how much in all, and when last.
--
-- Kept asynchronously: the projection engine follows the commit-safe feed
-- from a checkpoint (projection_status), a batch at a time, so the append
-- path does not pay for it. It lags the log by a moment.
--
-- How each event type changes it:
--   BulkTransferBooked    per transfer: transfers + 1, total_cents + amount,
--                         counterparty_name and last_position updated
--   every other event     nothing

CREATE TABLE IF NOT EXISTS counterparties (
    account_id          uuid        NOT NULL,
    counterparty_iban   text        NOT NULL,
    counterparty_name   text        NOT NULL,
    transfers           bigint      NOT NULL,
    -- numeric, not bigint: a sum of many transfers to one payee can pass
    -- what a bigint holds, and an overflow would stall the runner for good.
    total_cents         numeric     NOT NULL,
    currency            text        NOT NULL,
    last_position       bigint      NOT NULL,
    last_paid_at        timestamptz NOT NULL,
    PRIMARY KEY (account_id, counterparty_iban)
);

-- Tables made before total_cents was numeric get it here (only then: the
-- ALTER takes the table's lock).
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
        WHERE attrelid = 'counterparties'::regclass AND attname = 'total_cents') = 'bigint'::regtype THEN
        ALTER TABLE counterparties ALTER COLUMN total_cents TYPE numeric;
    END IF;
END;
$$;

-- PL/pgSQL: planned once per session, not at every call.
CREATE OR REPLACE FUNCTION projection_counterparties_apply(batch events[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    rows_written bigint;
BEGIN
    WITH paid AS (
        SELECT e.stream_id AS account_id,
               t.item->>'counterparty_iban' AS counterparty_iban,
               t.item->>'counterparty_name' AS counterparty_name,
               t.item->>'currency' AS currency,
               (t.item->>'amount_cents')::bigint AS amount_cents,
               e.position, t.seq, e.recorded_at
        FROM unnest(batch) AS e
        CROSS JOIN LATERAL jsonb_array_elements(e.data->'transfers') WITH ORDINALITY AS t(item, seq)
        WHERE e.event_type = 'BulkTransferBooked'
    ), per_payee AS (
        SELECT account_id, counterparty_iban, count(*) AS transfers, sum(amount_cents) AS total_cents,
               max(ARRAY[position, seq]) AS latest, max(recorded_at) AS last_paid_at
        FROM paid
        GROUP BY account_id, counterparty_iban
    ), named AS (
        -- The name and currency of each payee's latest transfer in the batch
        -- (by position, then order in the bulk; the pair is unique), found
        -- by joining that transfer back rather than by sorting every
        -- transfer of the batch per payee (two ordered array_aggs took
        -- about two thirds of this function's time on a payroll of bulks).
        SELECT p.account_id, p.counterparty_iban, q.counterparty_name, p.transfers, p.total_cents, q.currency,
               p.latest[1] AS last_position, p.last_paid_at
        FROM per_payee AS p
        JOIN paid AS q ON q.account_id = p.account_id AND q.counterparty_iban = p.counterparty_iban
                      AND q.position = p.latest[1] AND q.seq = p.latest[2]
    ), upserted AS (
        INSERT INTO counterparties AS c (account_id, counterparty_iban, counterparty_name, transfers, total_cents,
                                         currency, last_position, last_paid_at)
        SELECT account_id, counterparty_iban, counterparty_name, transfers, total_cents, currency,
               last_position, last_paid_at
        FROM named
        ON CONFLICT (account_id, counterparty_iban) DO UPDATE
        SET counterparty_name = excluded.counterparty_name,
            transfers = c.transfers + excluded.transfers,
            total_cents = c.total_cents + excluded.total_cents,
            currency = excluded.currency,
            last_position = excluded.last_position,
            last_paid_at = excluded.last_paid_at
        RETURNING 1
    )
    SELECT count(*) INTO rows_written FROM upserted;
    RETURN rows_written;
END;
$$;

-- A rebuild's first pass: the rows of the accounts in partition `part` of
-- `partitions` (by the stream id's last byte) from every bulk of the log
-- below `below`, in one aggregation. An account's stream is appended to
-- one batch at a time, so its positions follow its feed order, and the
-- name and currency of its latest transfer (by position, then order in the
-- bulk) are what the apply function's upserts leave. The input is sorted
-- that way, so each group's first value is its latest one. The table is
-- empty and unindexed when this runs; later events go through the apply
-- function (the rebuild property test compares the two).
CREATE OR REPLACE FUNCTION projection_counterparties_load(below xid8, partitions integer, part integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    rows_written bigint;
BEGIN
    WITH paid AS (
        SELECT e.stream_id AS account_id,
               (t.item->>'counterparty_iban') COLLATE "C" AS counterparty_iban,
               t.item->>'counterparty_name' AS counterparty_name,
               t.item->>'currency' AS currency,
               (t.item->>'amount_cents')::bigint AS amount_cents,
               e.position, t.seq, e.recorded_at
        FROM events AS e
        CROSS JOIN LATERAL jsonb_array_elements(e.data->'transfers') WITH ORDINALITY AS t(item, seq)
        WHERE e.event_type = 'BulkTransferBooked'
          AND e.tx_id < below AND get_byte(uuid_send(e.stream_id), 15) % partitions = part
        ORDER BY 1, 2, e.position DESC, t.seq DESC
    )
    INSERT INTO counterparties (account_id, counterparty_iban, counterparty_name, transfers, total_cents,
                                currency, last_position, last_paid_at)
    SELECT account_id, counterparty_iban, (array_agg(counterparty_name))[1], count(*), sum(amount_cents),
           (array_agg(currency))[1], max(position), max(recorded_at)
    FROM paid
    GROUP BY account_id, counterparty_iban;
    GET DIAGNOSTICS rows_written = ROW_COUNT;
    RETURN rows_written;
END;
$$;

-- The same rows, when the same rebuild has just loaded `transactions`
-- (`kind = 'transfer'` rows are a bulk's transfers, spent as negative
-- amounts): its narrow rows instead of parsing every bulk's JSON again.
CREATE OR REPLACE FUNCTION projection_counterparties_load_from_transactions(partitions integer, part integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    rows_written bigint;
BEGIN
    WITH paid AS (
        -- Grouped in byte order: the same groups (equality is byte equality)
        -- without the locale's collation in the sort.
        SELECT t.account_id, t.counterparty_iban COLLATE "C" AS counterparty_iban, t.counterparty_name, t.currency,
               -t.amount_cents AS amount_cents, t.position, t.seq, t.recorded_at
        FROM transactions AS t
        WHERE t.kind = 'transfer' AND get_byte(uuid_send(t.account_id), 15) % partitions = part
        ORDER BY 1, 2, t.position DESC, t.seq DESC
    )
    INSERT INTO counterparties (account_id, counterparty_iban, counterparty_name, transfers, total_cents,
                                currency, last_position, last_paid_at)
    SELECT account_id, counterparty_iban, (array_agg(counterparty_name))[1], count(*), sum(amount_cents),
           (array_agg(currency))[1], max(position), max(recorded_at)
    FROM paid
    GROUP BY account_id, counterparty_iban;
    GET DIAGNOSTICS rows_written = ROW_COUNT;
    RETURN rows_written;
END;
$$;
