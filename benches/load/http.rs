//! The HTTP side: one raw hyper HTTP/1.1 connection per worker (so "N
//! connections" means exactly N sockets, and the client spends as little of
//! the shared CPU as possible), the ledger's request bodies, valid IBANs, and
//! the account set-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION as AUTHORIZATION_HEADER, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::driver::{CallResult, Worker};

pub const BIC: &str = "COBADEFFXXX";
/// The German bank code of every generated account (Commerzbank, Frankfurt).
const BANK_CODE: &str = "37040044";
const COUNTERPARTY_IBAN: &str = "GB82WEST12345698765432";
const COUNTERPARTY_BIC: &str = "NWBKGB2L";
/// Per transfer; accounts are funded with [`FUNDING`] so none is refused.
const TRANSFER_AMOUNT: &str = "1.00";
pub const FUNDING: &str = "1000000000.00";
/// A request that has not answered by then counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections used to open and fund the accounts.
const SETUP_CONNECTIONS: usize = 16;
/// Longest error body quoted in the report.
const ERROR_BODY_MAX: usize = 600;

/// A German IBAN for account `number` at [`BANK_CODE`], with correct mod-97
/// check digits (ISO 13616): move the country code and "00" to the end,
/// letters to numbers (A=10 … Z=35), check = 98 - (n mod 97).
pub fn german_iban(number: u64) -> String {
    let bban = format!("{BANK_CODE}{number:010}");
    // "DE00" rearranged: D=13, E=14, then the placeholder check digits.
    let digits = format!("{bban}131400");
    let remainder = digits.bytes().fold(0u32, |n, d| (n * 10 + u32::from(d - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - remainder)
}

/// An account of the benchmark: its IBAN and the organization name that a
/// bulk must repeat.
#[derive(Clone, Debug)]
pub struct Account {
    pub iban: String,
    pub name: String,
}

impl Account {
    pub fn new(number: u64, name: String) -> Account {
        Account {
            iban: german_iban(number),
            name,
        }
    }
}

/// The bulk from `account` with `transfers` identical credit transfers (ids
/// are assigned by the server), as JSON.
pub fn bulk_json(account: &Account, transfers: usize) -> serde_json::Value {
    let transfer = json!({
        "amount": TRANSFER_AMOUNT,
        "currency": "EUR",
        "counterparty_name": "Hank Scorpio",
        "counterparty_bic": COUNTERPARTY_BIC,
        "counterparty_iban": COUNTERPARTY_IBAN,
        "description": "load benchmark",
    });
    json!({
        "organization_name": account.name,
        "organization_bic": BIC,
        "organization_iban": account.iban,
        "credit_transfers": vec![transfer; transfers],
    })
}

/// A payroll from `account`: one transfer of [`TRANSFER_AMOUNT`] to each
/// of `payees`, accounts of the ledger itself (on-us, SPEC §9).
pub fn payroll_json(account: &Account, payees: &[Account]) -> serde_json::Value {
    let transfers: Vec<_> = payees
        .iter()
        .map(|payee| {
            json!({
                "amount": TRANSFER_AMOUNT,
                "currency": "EUR",
                "counterparty_name": payee.name,
                "counterparty_bic": BIC,
                "counterparty_iban": payee.iban,
                "description": "salary",
            })
        })
        .collect();
    json!({
        "organization_name": account.name,
        "organization_bic": BIC,
        "organization_iban": account.iban,
        "credit_transfers": transfers,
    })
}

/// The body of `POST /v1/transfer/bulk`: [`bulk_json`] serialized.
pub fn bulk_body(account: &Account, transfers: usize) -> Bytes {
    Bytes::from(serde_json::to_vec(&bulk_json(account, transfers)).expect("a JSON value serializes"))
}

/// `Authorization: Bearer <key>`, sent with every request once set.
static AUTHORIZATION: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();

/// Makes every request carry this API key.
pub fn use_api_key(key: &str) -> anyhow::Result<()> {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).context("an API key is a header value")?;
    value.set_sensitive(true);
    AUTHORIZATION
        .set(value)
        .map_err(|_| anyhow::anyhow!("the API key is set once per run"))
}

/// One HTTP/1.1 keep-alive connection to the server.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Connection {
    pub async fn open(address: SocketAddr) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect to {address}: {e}"))?;
        // Small requests must leave at once, not wait for Nagle.
        stream.set_nodelay(true).map_err(|e| format!("set TCP_NODELAY: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {address}: {e}"))?;
        // The connection's I/O runs on its own task; it ends when `sender`
        // is dropped or the server closes the socket.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let host = HeaderValue::from_str(&address.to_string()).expect("an address is a valid header value");
        Ok(Connection { sender, host })
    }

    /// POSTs a JSON body; returns the status and the whole response body.
    pub async fn post(
        &mut self,
        path: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        self.send(Method::POST, path, body, "application/json", idempotency_key)
            .await
    }

    /// POSTs a body of another media type (a pain.001 in XML).
    pub async fn post_as(
        &mut self,
        path: &str,
        body: Bytes,
        content_type: &'static str,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        self.send(Method::POST, path, body, content_type, idempotency_key).await
    }

    /// GETs `path`; returns the status and the whole response body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        self.send(Method::GET, path, Bytes::new(), "application/json", None)
            .await
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &'static str,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, content_type);
        if let Some(authorization) = AUTHORIZATION.get() {
            request = request.header(AUTHORIZATION_HEADER, authorization.clone());
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("build request: {e}"))?;
        let exchange = async {
            self.sender.ready().await.map_err(|e| format!("connection lost: {e}"))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status().as_u16();
            // Read the body to the end, so the connection can carry the next request.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

/// Which prepared body the next request sends.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    /// Always the first (the hot account).
    First,
    /// Uniformly at random among all of them (the spread accounts).
    Uniform,
}

/// A [`Worker`] posting prepared bulk bodies on its own connection.
pub struct BulkWorker {
    address: SocketAddr,
    connection: Option<Connection>,
    bodies: Arc<Vec<Bytes>>,
    pick: Pick,
    transfers_per_bulk: u64,
    rng: XorShift,
    /// `None`: send no Idempotency-Key; else the prefix of a per-request key.
    key_prefix: Option<String>,
    sequence: u64,
}

impl BulkWorker {
    pub fn new(
        address: SocketAddr,
        bodies: Arc<Vec<Bytes>>,
        pick: Pick,
        transfers_per_bulk: usize,
        key_prefix: Option<String>,
        seed: u64,
    ) -> BulkWorker {
        BulkWorker {
            address,
            connection: None,
            bodies,
            pick,
            transfers_per_bulk: transfers_per_bulk as u64,
            rng: XorShift::new(seed),
            key_prefix,
            sequence: 0,
        }
    }
}

impl Worker for BulkWorker {
    async fn call(&mut self) -> CallResult {
        let body = match self.pick {
            Pick::First => self.bodies[0].clone(),
            Pick::Uniform => self.bodies[self.rng.below(self.bodies.len())].clone(),
        };
        self.sequence += 1;
        let key = self.key_prefix.as_ref().map(|p| format!("{p}-{}", self.sequence));
        if self.connection.is_none() {
            match Connection::open(self.address).await {
                Ok(connection) => self.connection = Some(connection),
                Err(error) => return CallResult::Failed(error),
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        match connection.post("/v1/transfer/bulk", body, key.as_deref()).await {
            Ok((status, _)) if (200..300).contains(&status) => CallResult::Accepted {
                transfers: self.transfers_per_bulk,
            },
            Ok((status, body)) => CallResult::Refused {
                status,
                body: quote_body(&body),
            },
            Err(error) => {
                // The connection may be broken: open a new one next time.
                self.connection = None;
                CallResult::Failed(error)
            }
        }
    }
}

/// An error body for the report: UTF-8, one line, bounded.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).replace('\n', " ");
    match text.char_indices().nth(ERROR_BODY_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Opens and funds every account over the API, [`SETUP_CONNECTIONS`]
/// at a time.
pub async fn open_and_fund(address: SocketAddr, accounts: &[Account]) -> anyhow::Result<()> {
    let accounts = Arc::new(accounts.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..SETUP_CONNECTIONS)
        .map(|_| {
            let accounts = accounts.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut connection = Connection::open(address).await.map_err(anyhow::Error::msg)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(account) = accounts.get(i) else { break };
                    let open =
                        json!({"organization_name": account.name, "iban": account.iban, "bic": BIC, "currency": "EUR"});
                    expect_201(&mut connection, "/v1/accounts", &open).await?;
                    let deposit = json!({"amount": FUNDING, "currency": "EUR", "reference": "load benchmark funding"});
                    let path = format!("/v1/accounts/{}/deposits", account.iban);
                    expect_201(&mut connection, &path, &deposit).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("an account set-up task died")??;
    }
    Ok(())
}

pub async fn expect_201(connection: &mut Connection, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let bytes = Bytes::from(serde_json::to_vec(body)?);
    let (status, answer) = connection.post(path, bytes, None).await.map_err(anyhow::Error::msg)?;
    if status != 201 {
        bail!("POST {path} answered {status}: {}", quote_body(&answer));
    }
    Ok(())
}

/// xorshift64*: a tiny, fast, seedable generator; choosing an account needs
/// no more (and no dependency).
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // The state must never be zero.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (the modulo bias for n = 1,000 is below 1e-16).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
