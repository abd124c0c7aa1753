-- Projection `transactions`: an account's history, one row per booked
-- movement (a deposit, or one transfer of a bulk), with the balance right
-- after it.
--
-- How each event type changes it:
--   AccountOpened         nothing
--   FundsDeposited        one row, amount +amount_cents, kind 'deposit'
--   BulkTransferBooked    one row per transfer, in request order, amount
--                         -amount_cents, kind 'transfer', running balance
--   BulkTransferRejected  nothing (no money moved; the event stays in the log)
--   TransferReceived      one row, amount +amount_cents, kind 'transfer_received',
--                         the payer as counterparty, transaction_id the transfer's
--   TransferReturned      one row, amount +amount_cents, kind 'transfer_returned',
--                         the payee as counterparty, its reason

CREATE TABLE IF NOT EXISTS transactions (
    account_id          uuid        NOT NULL,
    -- (position, seq) orders the history: seq numbers the transfers of one
    -- bulk event, 1 for a deposit.
    position            bigint      NOT NULL,
    seq                 integer     NOT NULL,
    transaction_id      uuid        NOT NULL,
    kind                text        NOT NULL,
    amount_cents        bigint      NOT NULL,
    currency            text        NOT NULL,
    counterparty_name   text,
    counterparty_iban   text,
    counterparty_bic    text,
    description         text,
    bulk_id             uuid,
    balance_after_cents bigint      NOT NULL,
    recorded_at         timestamptz NOT NULL,
    PRIMARY KEY (account_id, position, seq)
);

-- Why a movement happened when it is not the client's own doing (a
-- returned transfer's reason). Added after the first release: tables made
-- before it get the column here.
ALTER TABLE transactions ADD COLUMN IF NOT EXISTS reason text;
-- The payer's ISO 20022 end-to-end reference of a transfer (and of its
-- credit or return), when it gave one. Added later, the same way.
ALTER TABLE transactions ADD COLUMN IF NOT EXISTS end_to_end_id text;

-- PL/pgSQL, its plan made once per session and reused (generic: see
-- `projection_balances_apply` for why it is forced), not at every call.
CREATE OR REPLACE FUNCTION projection_transactions_apply(batch events[]) RETURNS bigint
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    rows_written bigint;
BEGIN
    -- Per-event values are read once per event (MATERIALIZED): reading them
    -- from the event's whole payload for every transfer row would parse a
    -- large bulk's JSON once per transfer.
    WITH bulks AS MATERIALIZED (
        SELECT e.stream_id, e.position, e.recorded_at,
               (e.data->>'bulk_id')::uuid AS bulk_id,
               (e.data->>'balance_after_cents')::bigint + (e.data->>'total_cents')::bigint AS balance_before_cents,
               e.data->'transfers' AS transfers
        FROM unnest(batch) AS e
        WHERE e.event_type = 'BulkTransferBooked'
    ), inserted AS (
        INSERT INTO transactions (account_id, position, seq, transaction_id, kind, amount_cents,
                                  currency, counterparty_name, counterparty_iban, counterparty_bic,
                                  description, bulk_id, balance_after_cents, recorded_at, reason, end_to_end_id)
        SELECT e.stream_id, e.position, 1, (e.data->>'deposit_id')::uuid, 'deposit',
               (e.data->>'amount_cents')::bigint, e.data->>'currency', NULL, NULL, NULL,
               e.data->>'reference', NULL, (e.data->>'balance_after_cents')::bigint, e.recorded_at, NULL, NULL
        FROM unnest(batch) AS e
        WHERE e.event_type = 'FundsDeposited'
        UNION ALL
        SELECT e.stream_id, e.position, 1, (e.data->>'transfer_id')::uuid, 'transfer_received',
               (e.data->>'amount_cents')::bigint, e.data->>'currency', e.data->>'payer_name',
               e.data->>'payer_iban', e.data->>'payer_bic', e.data->>'description',
               (e.data->>'bulk_id')::uuid, (e.data->>'balance_after_cents')::bigint, e.recorded_at, NULL,
               e.data->>'end_to_end_id'
        FROM unnest(batch) AS e
        WHERE e.event_type = 'TransferReceived'
        UNION ALL
        SELECT e.stream_id, e.position, 1, (e.data->>'transfer_id')::uuid, 'transfer_returned',
               (e.data->>'amount_cents')::bigint, e.data->>'currency', e.data->>'payee_name',
               e.data->>'payee_iban', e.data->>'payee_bic', e.data->>'description',
               (e.data->>'bulk_id')::uuid, (e.data->>'balance_after_cents')::bigint, e.recorded_at,
               e.data->>'reason', e.data->>'end_to_end_id'
        FROM unnest(batch) AS e
        WHERE e.event_type = 'TransferReturned'
        UNION ALL
        -- The balance after the i-th transfer of a bulk is the balance before
        -- the bulk minus the transfers up to and including it; the running
        -- sum is taken within each bulk, over that bulk's transfers only.
        SELECT b.stream_id, b.position, t.seq::integer, (t.item->>'transfer_id')::uuid, 'transfer',
               -(t.item->>'amount_cents')::bigint, t.item->>'currency',
               t.item->>'counterparty_name', t.item->>'counterparty_iban',
               t.item->>'counterparty_bic', t.item->>'description', b.bulk_id,
               b.balance_before_cents - t.spent_cents, b.recorded_at, NULL, t.item->>'end_to_end_id'
        FROM bulks AS b
        CROSS JOIN LATERAL (
            SELECT items.item, items.seq,
                   sum((items.item->>'amount_cents')::bigint) OVER (ORDER BY items.seq) AS spent_cents
            FROM jsonb_array_elements(b.transfers) WITH ORDINALITY AS items(item, seq)
        ) AS t
        RETURNING 1
    )
    SELECT count(*) INTO rows_written FROM inserted;
    RETURN rows_written;
END;
$$;

-- A rebuild's first pass: the rows of every event of the log below `below`
-- stored in the events table's heap blocks `first_block` up to (not
-- including) `end_block` (NULL: to the end), straight from the table (a TID
-- range scan: side-by-side loads each read their own share of the table,
-- not all of it; a row's values depend on its event alone), in one scan of
-- it. The same rows as `projection_transactions_apply`, spelled out again
-- for a scan: keep the two in step (the rebuild property test compares
-- them). The table is empty and unindexed when this runs; later events go
-- through the apply function. PL/pgSQL for its row count (GET DIAGNOSTICS):
-- a data-modifying CTE with RETURNING would keep every row written only to
-- count them.
DROP FUNCTION IF EXISTS projection_transactions_load(xid8, integer, integer);
CREATE OR REPLACE FUNCTION projection_transactions_load(below xid8, first_block bigint, end_block bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    rows_written bigint;
BEGIN
    INSERT INTO transactions (account_id, position, seq, transaction_id, kind, amount_cents,
                              currency, counterparty_name, counterparty_iban, counterparty_bic,
                              description, bulk_id, balance_after_cents, recorded_at, reason, end_to_end_id)
    SELECT e.stream_id, e.position, r.seq, r.transaction_id, r.kind, r.amount_cents, r.currency,
           r.counterparty_name, r.counterparty_iban, r.counterparty_bic, r.description, r.bulk_id,
           r.balance_after_cents, e.recorded_at, r.reason, r.end_to_end_id
    FROM (
        -- A bulk's values are read out of its payload here, once per bulk
        -- (OFFSET 0 keeps them from being pulled into the lateral below,
        -- which would read a large bulk's JSON once per transfer).
        SELECT e.stream_id, e.position, e.recorded_at, e.event_type,
               CASE WHEN e.event_type <> 'BulkTransferBooked' THEN e.data END AS single,
               CASE WHEN e.event_type = 'BulkTransferBooked' THEN (e.data->>'bulk_id')::uuid END AS bulk_id,
               CASE WHEN e.event_type = 'BulkTransferBooked'
                    THEN (e.data->>'balance_after_cents')::bigint + (e.data->>'total_cents')::bigint END
                   AS balance_before_cents,
               CASE WHEN e.event_type = 'BulkTransferBooked' THEN e.data->'transfers' END AS transfers
        FROM events AS e
        WHERE e.ctid >= format('(%s,0)', first_block)::tid
          AND e.ctid < format('(%s,0)', coalesce(end_block, 4294967295))::tid
          AND e.event_type IN ('FundsDeposited', 'TransferReceived', 'TransferReturned', 'BulkTransferBooked')
          AND e.tx_id < below
        OFFSET 0
    ) AS e
    CROSS JOIN LATERAL (
        -- The single-row events, their differences spelled as CASEs.
        SELECT 1 AS seq,
               (e.single->>CASE WHEN e.event_type = 'FundsDeposited' THEN 'deposit_id' ELSE 'transfer_id' END)::uuid
                   AS transaction_id,
               CASE e.event_type WHEN 'FundsDeposited' THEN 'deposit'
                                 WHEN 'TransferReceived' THEN 'transfer_received'
                                 ELSE 'transfer_returned' END AS kind,
               (e.single->>'amount_cents')::bigint AS amount_cents, e.single->>'currency' AS currency,
               e.single->>CASE e.event_type WHEN 'TransferReceived' THEN 'payer_name'
                                            WHEN 'TransferReturned' THEN 'payee_name' END AS counterparty_name,
               e.single->>CASE e.event_type WHEN 'TransferReceived' THEN 'payer_iban'
                                            WHEN 'TransferReturned' THEN 'payee_iban' END AS counterparty_iban,
               e.single->>CASE e.event_type WHEN 'TransferReceived' THEN 'payer_bic'
                                            WHEN 'TransferReturned' THEN 'payee_bic' END AS counterparty_bic,
               e.single->>CASE WHEN e.event_type = 'FundsDeposited' THEN 'reference' ELSE 'description' END
                   AS description,
               (e.single->>'bulk_id')::uuid AS bulk_id,
               (e.single->>'balance_after_cents')::bigint AS balance_after_cents,
               e.single->>'reason' AS reason, e.single->>'end_to_end_id' AS end_to_end_id
        WHERE e.event_type <> 'BulkTransferBooked'
        UNION ALL
        -- A bulk's transfers, in request order: the balance after the i-th
        -- is the balance before the bulk minus the transfers up to it.
        SELECT t.seq::integer, (t.item->>'transfer_id')::uuid, 'transfer',
               -(t.item->>'amount_cents')::bigint, t.item->>'currency',
               t.item->>'counterparty_name', t.item->>'counterparty_iban',
               t.item->>'counterparty_bic', t.item->>'description', e.bulk_id,
               e.balance_before_cents - t.spent_cents, NULL, t.item->>'end_to_end_id'
        FROM (
            SELECT items.item, items.seq,
                   sum((items.item->>'amount_cents')::bigint) OVER (ORDER BY items.seq) AS spent_cents
            FROM jsonb_array_elements(e.transfers) WITH ORDINALITY AS items(item, seq)
        ) AS t
        WHERE e.event_type = 'BulkTransferBooked'
    ) AS r;
    GET DIAGNOSTICS rows_written = ROW_COUNT;
    RETURN rows_written;
END;
$$;
