-- Double entry (SPEC §9): the posting process that credits on-us transfers
-- to their payees follows the commit-safe feed from this checkpoint. The
-- checkpoint moves in the same transaction as the credits and returns it
-- appends, so a page of the feed is posted exactly once; two servers take
-- turns on the row (FOR UPDATE SKIP LOCKED).
CREATE TABLE process_checkpoints (
    name                text        PRIMARY KEY,
    checkpoint_tx       bigint      NOT NULL DEFAULT 0,
    checkpoint_position bigint      NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO process_checkpoints (name) VALUES ('posting');

-- The last line of defence for exactly once: a transfer has at most one
-- credit or return in the whole log, whatever any process does.
CREATE UNIQUE INDEX events_transfer_leg_key ON events ((data->>'transfer_id'))
    WHERE event_type IN ('TransferReceived', 'TransferReturned');

-- Read your writes (SPEC §9): a command's answer carries the log position
-- of its last event; a replay answers the same, so the position is kept
-- with the recorded answer (taken from the events the append inserted).
ALTER TABLE idempotency_keys ADD COLUMN position bigint;
