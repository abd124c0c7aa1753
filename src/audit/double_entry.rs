//! The double-entry audit (SPEC §9), recomputed from the log: every credit
//! or return has its debit and matches it, sits on the right account and
//! exists once; every on-us transfer the posting process has passed has
//! its credit or return; the trial balance sums to zero per currency.

use sqlx::PgPool;
use uuid::Uuid;

use super::Difference;

/// Every double-entry violation in the log, or only those on `account`'s
/// stream (the payer's for a missing leg, the leg's own otherwise).
pub async fn differences(pool: &PgPool, account: Option<Uuid>) -> Result<Vec<Difference>, sqlx::Error> {
    // A transfer counts as on-us (so it must have a leg once passed) when
    // its payee's account was opened in a transaction older than the bulk's:
    // the posting process then necessarily saw it (it reads a bulk only once
    // every older transaction has finished). A payee opened later may
    // rightly have been taken for another bank's, and is not judged.
    let rows: Vec<(Uuid, Option<String>, i64, String)> = sqlx::query_as(
        "WITH cp AS ( \
             SELECT checkpoint_tx::text::xid8 AS tx, checkpoint_position AS pos \
             FROM process_checkpoints WHERE name = 'posting' \
         ), debits AS ( \
             SELECT e.stream_id AS payer_id, e.position, e.tx_id, t.item->>'transfer_id' AS transfer_id, \
                    (t.item->>'amount_cents')::bigint AS amount_cents, t.item->>'currency' AS currency, \
                    t.item->>'counterparty_iban' AS payee_iban, \
                    (e.tx_id, e.position) <= (cp.tx, cp.pos) AS passed \
             FROM events e CROSS JOIN cp \
             CROSS JOIN LATERAL jsonb_array_elements(e.data->'transfers') AS t(item) \
             WHERE e.event_type = 'BulkTransferBooked' \
         ), legs AS ( \
             SELECT e.stream_id, e.position, e.event_type, e.data->>'transfer_id' AS transfer_id, \
                    (e.data->>'amount_cents')::bigint AS amount_cents, e.data->>'currency' AS currency \
             FROM events e WHERE e.event_type IN ('TransferReceived', 'TransferReturned') \
         ), accounts AS ( \
             SELECT e.stream_id AS account_id, e.data->>'iban' AS iban, e.tx_id, e.position \
             FROM events e WHERE e.event_type = 'AccountOpened' \
         ), found AS ( \
             SELECT l.stream_id AS account_id, l.position, \
                    format('%s of transfer %s has no debit', l.event_type, l.transfer_id) AS what \
             FROM legs l WHERE NOT EXISTS (SELECT 1 FROM debits d WHERE d.transfer_id = l.transfer_id) \
             UNION ALL \
             SELECT l.stream_id, l.position, \
                    format('%s of transfer %s is %s %s but its debit was %s %s', l.event_type, l.transfer_id, \
                           l.amount_cents, l.currency, d.amount_cents, d.currency) \
             FROM legs l JOIN debits d USING (transfer_id) \
             WHERE l.amount_cents <> d.amount_cents OR l.currency <> d.currency \
             UNION ALL \
             SELECT l.stream_id, l.position, \
                    format('%s of transfer %s is on an account that is not its %s', l.event_type, l.transfer_id, \
                           CASE l.event_type WHEN 'TransferReceived' THEN 'payee' ELSE 'payer' END) \
             FROM legs l JOIN debits d USING (transfer_id) LEFT JOIN accounts a ON a.account_id = l.stream_id \
             WHERE (l.event_type = 'TransferReceived' AND a.iban IS DISTINCT FROM d.payee_iban) \
                OR (l.event_type = 'TransferReturned' AND l.stream_id <> d.payer_id) \
             UNION ALL \
             SELECT (array_agg(l.stream_id ORDER BY l.position))[1], max(l.position), \
                    format('transfer %s has %s credits or returns', l.transfer_id, count(*)) \
             FROM legs l GROUP BY l.transfer_id HAVING count(*) > 1 \
             UNION ALL \
             SELECT d.payer_id, d.position, \
                    format('transfer %s to %s, an account of this ledger, was never credited or returned', \
                           d.transfer_id, d.payee_iban) \
             FROM debits d JOIN accounts a ON a.iban = d.payee_iban AND (a.tx_id, a.position) < (d.tx_id, d.position) \
             WHERE d.passed AND NOT EXISTS (SELECT 1 FROM legs l WHERE l.transfer_id = d.transfer_id) \
         ) \
         SELECT f.account_id, a.iban, f.position, f.what \
         FROM found f LEFT JOIN accounts a USING (account_id) \
         WHERE $1::uuid IS NULL OR f.account_id = $1 \
         ORDER BY f.position",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(account_id, iban, position, what)| Difference {
            account_id,
            iban,
            position: Some(position),
            what,
        })
        .collect())
}
