//! The on-us payroll scenario (SPEC §9): one bulk pays every spread
//! account of the ledger, and the figure that matters is how long after
//! its 201 every payee's credit is visible. The 201 comes back as soon as
//! the payer's debit is durable; the credits follow from the posting
//! process, and a query with the 201's `min_position` answers only once
//! they are all in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use super::http::{Account, Connection, payroll_json};

/// Payrolls posted, one after the other on an otherwise idle server.
pub(super) const ROUNDS: usize = 5;
/// Each transfer of a payroll, in cents (`http::TRANSFER_AMOUNT`).
const TRANSFER_CENTS: i64 = 100;

/// What [`ROUNDS`] payrolls measured, in milliseconds, one entry per round.
pub(super) struct Figures {
    pub(super) transfers: usize,
    /// From sending the bulk to its 201.
    pub(super) booked_ms: Vec<f64>,
    /// From the 201 until a query with its `min_position` answered: every
    /// credit of the bulk is then visible.
    pub(super) credited_ms: Vec<f64>,
}

impl Figures {
    /// `(p50, max)` of a series.
    pub(super) fn summary(series: &[f64]) -> (f64, f64) {
        let mut sorted = series.to_vec();
        sorted.sort_by(f64::total_cmp);
        (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
    }
}

/// Posts [`ROUNDS`] payrolls from `payer` to all of `payees`, and checks
/// that the first and the last payee were credited each time (the figure
/// of a payroll that did not arrive would be meaningless).
pub(super) async fn run(address: SocketAddr, payer: &Account, payees: &[Account]) -> anyhow::Result<Figures> {
    let mut connection = Connection::open(address).await.map_err(anyhow::Error::msg)?;
    let body = Bytes::from(serde_json::to_vec(&payroll_json(payer, payees))?);
    let watched = [&payees[0], &payees[payees.len() - 1]];
    let mut figures = Figures {
        transfers: payees.len(),
        booked_ms: Vec::new(),
        credited_ms: Vec::new(),
    };
    for round in 0..ROUNDS {
        let mut before = Vec::new();
        for payee in watched {
            before.push(balance_cents(&mut connection, payee, None).await?);
        }
        let key = format!("bench-payroll-{}-{round}", std::process::id());
        let sent = Instant::now();
        let (status, answer) = connection
            .post("/v1/transfer/bulk", body.clone(), Some(&key))
            .await
            .map_err(anyhow::Error::msg)?;
        let booked = Instant::now();
        if status != 201 {
            bail!("the payroll answered {status}: {}", String::from_utf8_lossy(&answer));
        }
        let answer: serde_json::Value = serde_json::from_slice(&answer)?;
        let position = answer["position"].as_i64().context("a 201 carries its position")?;
        // The server waits for the position itself; a 503 after its bound
        // is asked again, and counts in the figure.
        let mut after = Vec::new();
        for payee in watched {
            after.push(balance_cents(&mut connection, payee, Some(position)).await?);
        }
        let credited = Instant::now();
        for ((payee, before), after) in watched.iter().zip(before).zip(after) {
            if after - before != TRANSFER_CENTS {
                bail!(
                    "payroll {round}: {} went from {before} to {after} cents, not +{TRANSFER_CENTS}",
                    payee.iban
                );
            }
        }
        figures.booked_ms.push((booked - sent).as_secs_f64() * 1000.0);
        figures.credited_ms.push((credited - booked).as_secs_f64() * 1000.0);
    }
    Ok(figures)
}

/// The account's balance, after `min_position` when given (retrying the
/// bounded wait's 503 for up to a minute).
async fn balance_cents(connection: &mut Connection, account: &Account, min: Option<i64>) -> anyhow::Result<i64> {
    let path = match min {
        Some(position) => format!("/v1/accounts/{}?min_position={position}", account.iban),
        None => format!("/v1/accounts/{}", account.iban),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = connection.get(&path).await.map_err(anyhow::Error::msg)?;
        match status {
            200 => {
                let account: serde_json::Value = serde_json::from_slice(&body)?;
                return account["balance_cents"]
                    .as_i64()
                    .context("an account carries balance_cents");
            }
            503 if Instant::now() < deadline => continue,
            _ => bail!("GET {path} answered {status}: {}", String::from_utf8_lossy(&body)),
        }
    }
}
