//! The feed relayed to NATS JetStream (issue #16): a real `nats-server`
//! with JetStream, started by the test, and the real binary's `ledger
//! relay` (and `serve` with `LEDGER_NATS_URL`). A JetStream consumer
//! receives every event of the log exactly once, in the feed's order,
//! across a SIGKILL of the relay, a restart of nats-server, two relays at
//! once and a takeover by the server's own relay task; a relay whose
//! checkpoint went back past the stream's duplicate window publishes
//! nothing twice; and an event past the server's `max_payload` goes without
//! its data, which the consumer reads from the feed.
//!
//! Needs `nats-server` (Debian: nats-server); `.ci/run` installs it and sets
//! LEDGER_NATS_TESTS=1, which turns a missing binary into a failure.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_stream::StreamExt;

use crate::support::*;

const PAYEE_IBAN: &str = "DE89370400440532013000";
const PREFIX: &str = "ledger.events";

/// `nats-server`, or `None` (with the reason printed) when it is not
/// installed and the run did not ask for it.
fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert_ne!(
            std::env::var("LEDGER_NATS_TESTS").as_deref(),
            Ok("1"),
            "LEDGER_NATS_TESTS=1 but nats-server is not installed"
        );
        eprintln!("skipped: nats-server is not installed (Debian: nats-server)");
    }
    found
}

/// A nats-server with JetStream on a port of its own, its store in a
/// directory of its own; killed and removed when dropped.
struct Nats {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(binary: PathBuf) -> Nats {
        Nats::start_with(binary, "")
    }

    /// With a configuration file of these lines (`max_payload: 8192`...).
    fn start_with(binary: PathBuf, config: &str) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = std::env::temp_dir().join(format!("ledger-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("nats.conf"), config).unwrap();
        let mut nats = Nats {
            binary,
            child: None,
            port,
            store,
        };
        nats.start_again();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start_again(&mut self) {
        let child = dying_with_the_test(&self.binary)
            .arg("-c")
            .arg(self.store.join("nats.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .arg("-l")
            .arg(self.store.join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            // Exited: the port was taken meanwhile, or the configuration is bad.
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none(),
                "nats-server exited ({exited:?}); see {}",
                self.store.join("nats.log").display()
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGTERM: its store is flushed) and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// `ledger relay` on the database, killed when dropped.
struct Relay(Child);

impl Relay {
    fn start(database_url: &str, nats: &Nats, stream: &str) -> Relay {
        let child = ledger_dying_with_the_test()
            .arg("relay")
            .env("DATABASE_URL", database_url)
            .env("LEDGER_NATS_URL", nats.url())
            .env("LEDGER_NATS_STREAM", stream)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ledger relay");
        Relay(child)
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// JetStream on the test's server, retried while the server starts.
async fn jetstream(nats: &Nats) -> jetstream::Context {
    let started = Instant::now();
    loop {
        match async_nats::connect(nats.url()).await {
            Ok(client) => return jetstream::new(client),
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "cannot reach nats-server: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Messages in the stream, or `None` while it cannot be read (it does not
/// exist yet, or JetStream is still recovering after a restart).
async fn try_stream_messages(context: &jetstream::Context, name: &str) -> Option<u64> {
    let mut stream = context.get_stream(name).await.ok()?;
    stream.info().await.ok().map(|info| info.state.messages)
}

/// Messages in a stream that exists, asked again (bounded) while JetStream
/// cannot answer yet.
async fn stream_messages(context: &jetstream::Context, name: &str) -> u64 {
    let started = Instant::now();
    loop {
        if let Some(messages) = try_stream_messages(context, name).await {
            return messages;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stream {name} cannot be read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the stream holds at least `count` messages.
async fn until_stream_holds(context: &jetstream::Context, name: &str, count: u64) {
    let started = Instant::now();
    loop {
        let messages = try_stream_messages(context, name).await.unwrap_or(0);
        if messages >= count {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stream holds {messages} messages, never {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the posting process and the relay have both
/// passed every event of the log, and returns the log's size.
///
/// The log is counted before and after the two lags are read: the posting
/// process appends credits of its own, and a count taken before it wrote
/// them (with both lags read as 0 after it did) would be short.
async fn until_relayed(pool: &PgPool) -> i64 {
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let started = Instant::now();
    loop {
        let events = count().await;
        let (_, posting) = ledger::posting::lag(pool).await.unwrap();
        let relay = ledger::relay::lag(pool).await.unwrap().map(|(_, lag)| lag);
        if posting == 0 && relay == Some(0) && count().await == events {
            return events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "posting lag {posting}, relay lag {relay:?} of {events} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One message as a consumer sees it.
struct Received {
    id: String,
    cursor: String,
    before: String,
    omitted: Option<usize>,
    subject: String,
    event: Value,
}

/// Every message of the stream through a JetStream pull consumer (each one
/// acknowledged), and a check that no more than `expected` arrive.
async fn consume(context: &jetstream::Context, name: &str, expected: usize) -> Vec<Received> {
    let stream = context.get_stream(name).await.unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut received = Vec::with_capacity(expected);
    let header = |message: &async_nats::jetstream::Message, name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default()
    };
    while received.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} messages arrived", received.len()))
            .unwrap()
            .unwrap();
        message.ack().await.unwrap();
        received.push(Received {
            id: header(&message, "Nats-Msg-Id"),
            cursor: header(&message, ledger::relay::CURSOR_HEADER),
            before: header(&message, ledger::relay::BEFORE_HEADER),
            omitted: header(&message, ledger::relay::OMITTED_HEADER).parse().ok(),
            subject: message.subject.to_string(),
            event: serde_json::from_slice(&message.payload).unwrap(),
        });
    }
    let more = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
    assert!(more.is_err(), "a message past the {expected} expected arrived");
    received
}

/// The consumer got the log exactly: one message per event, in the feed's
/// order (`(tx_id, position)`), each with its id, subject, cursor and the
/// feed's JSON view of the event.
async fn assert_exactly_the_feed(pool: &PgPool, received: &[Received]) {
    let feed: Vec<(i64, String)> =
        sqlx::query_as("SELECT position, tx_id::text || '-' || position FROM events ORDER BY tx_id, position")
            .fetch_all(pool)
            .await
            .unwrap();
    let ids: Vec<String> = received.iter().map(|r| r.id.clone()).collect();
    let expected: Vec<String> = feed.iter().map(|(position, _)| position.to_string()).collect();
    assert_eq!(ids.len(), expected.len(), "one message per event");
    assert_eq!(
        ids, expected,
        "the messages are the log's events in feed order, each once"
    );
    let mut before = "0".to_owned();
    for (message, (position, cursor)) in received.iter().zip(&feed) {
        assert_eq!(message.event["position"], *position);
        assert_eq!(message.before, before, "{}", message.event);
        before.clone_from(cursor);
        assert_eq!(&message.cursor, cursor, "{}", message.event);
        assert_eq!(message.event["after"], *cursor);
        let subject = format!(
            "{PREFIX}.{}.{}",
            message.event["type"].as_str().unwrap(),
            message.event["stream_id"].as_str().unwrap()
        );
        assert_eq!(message.subject, subject);
    }
    // Per stream, the versions arrive 1, 2, 3… with none missing.
    let mut versions: std::collections::HashMap<String, i64> = Default::default();
    for message in received {
        let last = versions.entry(message.event["stream_id"].to_string()).or_default();
        assert_eq!(message.event["version"], *last + 1, "{}", message.event);
        *last += 1;
    }
}

/// Deposits and on-us transfers (whose credits the posting process adds)
/// through the server until `stop`.
fn load(binary: &Binary, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let (client, base) = (binary.client.clone(), binary.base.clone());
    tokio::spawn(async move {
        let mut commands = 0;
        while !stop.load(Ordering::Relaxed) {
            let deposit = client
                .post(format!("{base}/v1/accounts/{ACME_IBAN}/deposits"))
                .json(&json!({"amount": "3.00"}))
                .send()
                .await
                .unwrap();
            assert_eq!(deposit.status(), 201);
            let transfers = (0..3)
                .map(|_| {
                    json!({"amount": "1.00", "currency": "EUR", "counterparty_name": "Globex GmbH",
                           "counterparty_bic": "COBADEFFXXX", "counterparty_iban": PAYEE_IBAN,
                           "description": "Invoice"})
                })
                .collect();
            let booked = client
                .post(format!("{base}/v1/transfer/bulk"))
                .json(&bulk(transfers))
                .send()
                .await
                .unwrap();
            assert_eq!(booked.status(), 201);
            commands += 2;
        }
        commands
    })
}

/// A deposit of 1.00 on ACME.
async fn deposit(binary: &Binary) {
    let deposited = binary
        .client
        .post(format!("{}/v1/accounts/{ACME_IBAN}/deposits", binary.base))
        .json(&json!({"amount": "1.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(deposited.status(), 201);
}

async fn open_payee(binary: &Binary) {
    let opened = binary
        .client
        .post(format!("{}/v1/accounts", binary.base))
        .json(&json!({"organization_name": "Globex GmbH", "iban": PAYEE_IBAN, "bic": "COBADEFFXXX", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_consumer_gets_every_event_once_across_kills_restarts_and_two_relays() {
    let Some(binary) = nats_server() else { return };
    let mut nats = Nats::start(binary);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let url = db.url();
    // The commands' server: no relay of its own yet.
    let server = Binary::serve(&[("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")]);
    open_acme(&server.client, &server.base, 1_000_000).await;
    open_payee(&server).await;
    let context = jetstream(&nats).await;
    let stop = Arc::new(AtomicBool::new(false));
    let commands = load(&server, Arc::clone(&stop));

    // One relay, killed with -9 in the middle of the stream.
    let first = Relay::start(&url, &nats, "LEDGER");
    until_stream_holds(&context, "LEDGER", 40).await;
    first.kill();
    let after_kill = stream_messages(&context, "LEDGER").await;

    // Two relays at once: one publishes, the other waits for the lock.
    let (second, third) = (Relay::start(&url, &nats, "LEDGER"), Relay::start(&url, &nats, "LEDGER"));
    until_stream_holds(&context, "LEDGER", after_kill + 40).await;

    // nats-server restarted under them.
    nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.start_again();
    let context = jetstream(&nats).await;
    let after_restart = stream_messages(&context, "LEDGER").await;
    until_stream_holds(&context, "LEDGER", after_restart + 40).await;

    // Both relays killed; the serving binary's own relay task takes over.
    second.kill();
    third.kill();
    let nats_url = nats.url();
    let taker = Binary::serve(&[
        ("DATABASE_URL", url.as_str()),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_NATS_URL", nats_url.as_str()),
    ]);
    let handed_over = stream_messages(&context, "LEDGER").await;
    until_stream_holds(&context, "LEDGER", handed_over + 40).await;

    stop.store(true, Ordering::Relaxed);
    let commands = commands.await.unwrap();
    assert!(commands >= 40, "the load made {commands} commands");
    let events = until_relayed(&pool).await;
    until_stream_holds(&context, "LEDGER", events as u64).await;
    // Everything the stream holds is read, so that a failure names the
    // messages that came twice (or the events that are missing).
    let in_stream = stream_messages(&context, "LEDGER").await;
    let received = consume(&context, "LEDGER", in_stream as usize).await;
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&str> = received
        .iter()
        .filter(|message| !seen.insert(message.id.as_str()))
        .map(|message| message.id.as_str())
        .collect();
    assert!(twice.is_empty(), "messages that came twice: {twice:?}");
    assert_eq!(in_stream, events as u64, "one message per event of the log");
    assert_exactly_the_feed(&pool, &received).await;

    // The relay's lag, in the operator's two places.
    let status = run_ledger(&["projections", "status"], &[("DATABASE_URL", url.as_str())]);
    assert!(status.status.success(), "{status:?}");
    let table = String::from_utf8(status.stdout).unwrap();
    let line = table.lines().find(|l| l.starts_with("relay:nats")).expect(&table);
    assert_eq!(line.split_whitespace().nth(4), Some("0"), "{table}");
    assert_eq!(metric_sample(&taker, "ledger_relay_lag_events").await, Some(0.0));
    let published = metric_sample(&taker, "ledger_relay_events_published_total").await;
    assert!(
        published.is_some_and(|n| n >= 40.0),
        "the serving relay published {published:?}"
    );
}

/// The duplicate window alone is not enough: a relay whose checkpoint went
/// back (restored from an older backup, say) and that starts after the
/// window has passed resumes after the stream's last message instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_checkpoint_went_back_past_the_duplicate_window_publishes_nothing_twice() {
    let Some(binary) = nats_server() else { return };
    let nats = Nats::start(binary);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let url = db.url();
    let server = Binary::serve(&[("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")]);
    open_acme(&server.client, &server.base, 1_000_000).await;
    for _ in 0..20 {
        deposit(&server).await;
    }
    // The stream made beforehand, with a window of a tenth of a second.
    let context = jetstream(&nats).await;
    context
        .create_stream(stream::Config {
            name: "SHORT".to_owned(),
            subjects: vec![format!("{PREFIX}.>")],
            duplicate_window: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .unwrap();

    let relay = Relay::start(&url, &nats, "SHORT");
    let events = until_relayed(&pool).await;
    until_stream_holds(&context, "SHORT", events as u64).await;
    relay.kill();

    sqlx::query("UPDATE process_checkpoints SET checkpoint_tx = 0, checkpoint_position = 0 WHERE name = 'relay:nats'")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = Relay::start(&url, &nats, "SHORT");
    let events_again = until_relayed(&pool).await;
    assert_eq!(events_again, events);
    // Give a wrongly republishing relay time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_messages(&context, "SHORT").await, events as u64);
    let received = consume(&context, "SHORT", events as usize).await;
    assert_exactly_the_feed(&pool, &received).await;
}

/// A bulk's event past the NATS server's `max_payload` (8 KiB here; 1 MB by
/// default, which a bulk of 10,000 transfers passes) is relayed in its place
/// without its data, marked so; its consumer reads it whole from the feed
/// with the message's `Ledger-Feed-Before`. Nothing stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_past_the_servers_max_payload_goes_without_its_data_and_is_read_from_the_feed() {
    let Some(binary) = nats_server() else { return };
    oversized_event(Nats::start_with(binary, "max_payload: 8192\n"), None).await;
}

/// The same for a stream whose own `max_msg_size` (8 KiB) is below the
/// server's `max_payload` (1 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_past_the_streams_max_message_size_goes_without_its_data() {
    let Some(binary) = nats_server() else { return };
    oversized_event(Nats::start(binary), Some(8_192)).await;
}

async fn oversized_event(nats: Nats, stream_max_message_size: Option<i32>) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let url = db.url();
    let server = Binary::serve(&[("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")]);
    open_acme(&server.client, &server.base, 1_000_000).await;
    let payroll: Vec<Value> = (0..100).map(|_| transfer("0.01")).collect();
    let booked = server
        .client
        .post(format!("{}/v1/transfer/bulk", server.base))
        .json(&bulk(payroll))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), 201);
    deposit(&server).await;

    let context = jetstream(&nats).await;
    if let Some(max_message_size) = stream_max_message_size {
        context
            .create_stream(stream::Config {
                name: "LEDGER".to_owned(),
                subjects: vec![format!("{PREFIX}.>")],
                max_message_size,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let _relay = Relay::start(&url, &nats, "LEDGER");
    let events = until_relayed(&pool).await;
    until_stream_holds(&context, "LEDGER", events as u64).await;
    let received = consume(&context, "LEDGER", events as usize).await;
    assert_exactly_the_feed(&pool, &received).await;

    let (large, small): (Vec<&Received>, Vec<&Received>) = received.iter().partition(|r| r.omitted.is_some());
    assert_eq!(large.len(), 1, "only the bulk's event is too large");
    let large = large[0];
    assert_eq!(large.event["type"], "BulkTransferBooked");
    assert!(large.event["data"].is_null(), "{}", large.event);
    assert!(large.omitted.unwrap() > 8_192);
    assert!(small.iter().all(|r| r.event["data"].is_object()));

    let (status, page) = into_parts(
        server
            .client
            .get(format!("{}/v1/events?after={}&limit=1", server.base, large.before))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let event = &page["events"][0];
    assert_eq!(event["position"], large.event["position"]);
    assert_eq!(event["data"]["transfers"].as_array().unwrap().len(), 100);
}

/// A stream whose last message is no event of this database (the database
/// restored from an older backup, or another ledger's stream) is refused:
/// resuming after it would skip the events written at those positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ahead_of_the_database_is_refused_not_resumed_after() {
    let Some(binary) = nats_server() else { return };
    let nats = Nats::start(binary);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let url = db.url();
    let server = Binary::serve(&[("DATABASE_URL", url.as_str()), ("LEDGER_IBAN_CHECK", "structure")]);
    open_acme(&server.client, &server.base, 1_000).await;

    let context = jetstream(&nats).await;
    context
        .create_stream(stream::Config {
            name: "AHEAD".to_owned(),
            subjects: vec![format!("{PREFIX}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let stranger = uuid::Uuid::new_v4();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "999999");
    headers.insert(ledger::relay::CURSOR_HEADER, "999999-999999");
    let payload = json!({"position": 999_999, "stream_id": stranger, "version": 7});
    context
        .publish_with_headers(
            format!("{PREFIX}.FundsDeposited.{stranger}"),
            headers,
            serde_json::to_vec(&payload).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let _relay = Relay::start(&url, &nats, "AHEAD");
    // It made its checkpoint, then refused (and goes on refusing, loudly).
    let started = Instant::now();
    while ledger::relay::lag(&pool).await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "the relay never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(stream_messages(&context, "AHEAD").await, 1, "nothing published");
    let (position, lag) = ledger::relay::lag(&pool).await.unwrap().unwrap();
    assert_eq!(position, 0, "the checkpoint did not move past the database's events");
    assert!(lag > 0);
}
