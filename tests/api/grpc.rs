//! The gRPC API through the real binary, with a tonic client: the seed's
//! scenarios, idempotency, status codes with field details, keys, the
//! event subscription, and a client that knows the service only through
//! server reflection (what grpcurl and Evans do).

use std::time::Duration;

use futures::future::join_all;
use ledger::grpc::pb;
use ledger::grpc::pb::ledger_service_client::LedgerServiceClient;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::support::*;

type Client = LedgerServiceClient<Channel>;

async fn connect(server: &Binary) -> Client {
    let address = server.grpc.clone().expect("the gRPC API is on");
    LedgerServiceClient::connect(address)
        .await
        .expect("connect to the gRPC API")
}

/// A request carrying `key` as its bearer token.
fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// The seed's JSON bulk as a gRPC message.
fn bulk_message(json: &Value, idempotency_key: Option<&str>) -> pb::TransferBulkRequest {
    pb::TransferBulkRequest {
        idempotency_key: idempotency_key.map(str::to_owned),
        ..ledger::grpc::bulk_request_from_json(json)
    }
}

struct Fixture {
    server: Binary,
    db: TestDb,
    client: Client,
    key: String,
}

/// A server with the seed's settings and ACME opened and funded over gRPC.
async fn funded(cents: i64) -> Fixture {
    let db = TestDb::new().await;
    let server = Binary::serve(&[("DATABASE_URL", &db.url()), ("LEDGER_IBAN_CHECK", "structure")]);
    let key = server.key.clone().unwrap();
    let mut client = connect(&server).await;
    let opened = client
        .open_account(with_key(
            pb::OpenAccountRequest {
                organization_name: ACME_NAME.into(),
                iban: ACME_IBAN.into(),
                bic: ACME_BIC.into(),
                currency: None,
                idempotency_key: None,
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.iban, ACME_IBAN);
    assert_eq!(opened.currency, "EUR");
    let deposited = client
        .deposit(with_key(
            pb::DepositRequest {
                iban: ACME_IBAN.into(),
                amount: format!("{}.{:02}", cents / 100, cents % 100),
                currency: None,
                reference: Some("funding".into()),
                idempotency_key: None,
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deposited.balance_cents, cents);
    Fixture {
        server,
        db,
        client,
        key,
    }
}

impl Fixture {
    async fn balance(&mut self) -> i64 {
        let account = self
            .client
            .get_account(with_key(
                pb::GetAccountRequest {
                    iban: ACME_IBAN.into(),
                    min_position: None,
                },
                &self.key,
            ))
            .await
            .unwrap()
            .into_inner();
        account.balance_cents
    }
}

/// Scenario 1 over gRPC: sample1 books three transfers and leaves 37,748.50.
#[tokio::test]
async fn sample1_over_grpc_books_three_transfers() {
    let mut f = funded(10_000_000).await;
    let booked = f
        .client
        .transfer_bulk(with_key(bulk_message(&fixture("sample1.json"), None), &f.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(booked.transfer_count, 3);
    assert_eq!(booked.transfer_ids.len(), 3);
    assert_eq!(booked.total, "62251.50");
    assert_eq!(booked.balance_after, "37748.50");
    assert!(!booked.replayed);
    assert_eq!(f.balance().await, 3_774_850);
    let page = f
        .client
        .list_transactions(with_key(
            pb::ListTransactionsRequest {
                iban: ACME_IBAN.into(),
                limit: Some(2),
                cursor: None,
                min_position: None,
            },
            &f.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].kind, "transfer");
    assert_eq!(page.items[0].balance_after_cents, 3_774_850);
    assert!(page.next_cursor.is_some());
}

/// Scenario 2 over gRPC: twenty concurrent sample1 bulks, exactly one booked.
#[tokio::test]
async fn sample1_over_grpc_concurrently_is_booked_once() {
    let mut f = funded(10_000_000).await;
    let body = bulk_message(&fixture("sample1.json"), None);
    let outcomes = join_all((0..20).map(|_| {
        let mut client = f.client.clone();
        let request = with_key(body.clone(), &f.key);
        async move { client.transfer_bulk(request).await }
    }))
    .await;
    let booked = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(booked, 1);
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    assert_eq!(f.balance().await, 3_774_850);
}

/// Scenario 3 over gRPC: sample2 is refused for insufficient funds, with the
/// amounts in the status details, and books nothing.
#[tokio::test]
async fn sample2_over_grpc_is_refused_and_books_nothing() {
    let mut f = funded(10_000_000).await;
    let refused = f
        .client
        .transfer_bulk(with_key(bulk_message(&fixture("sample2.json"), None), &f.key))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("does not cover"), "{}", refused.message());
    let details = refused.get_error_details();
    let info = details.error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "INSUFFICIENT_FUNDS");
    assert_eq!(info.metadata["requested_cents"], "10000001");
    assert_eq!(f.balance().await, 10_000_000);
}

#[tokio::test]
async fn an_idempotency_key_replays_over_grpc_and_across_apis() {
    let mut f = funded(10_000_000).await;
    let sample = fixture("sample1.json");
    let request = || with_key(bulk_message(&sample, Some("payroll-grpc")), &f.key);
    let first = f.client.clone().transfer_bulk(request()).await.unwrap().into_inner();
    let again = f.client.clone().transfer_bulk(request()).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(again.bulk_id, first.bulk_id);
    // The same key and content over HTTP is the same request.
    let response = f
        .server
        .client
        .post(format!("{}/v1/transfer/bulk", f.server.base))
        .header("Idempotency-Key", "payroll-grpc")
        .json(&sample)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    assert_eq!(into_parts(response).await.1["bulk_id"], first.bulk_id.as_str());
    // Another request under the key: ALREADY_EXISTS.
    let other = bulk_message(&bulk(vec![transfer("1.00")]), Some("payroll-grpc"));
    let conflict = f.client.transfer_bulk(with_key(other, &f.key)).await.unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
    // A bad key names the field.
    let bad = bulk_message(&sample, Some(&"k".repeat(256)));
    let status = f.client.transfer_bulk(with_key(bad, &f.key)).await.unwrap_err();
    assert_field(&status, "idempotency_key");
    assert_eq!(f.balance().await, 3_774_850, "booked once");
}

fn assert_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest").field_violations;
    assert!(violations.iter().any(|v| v.field == field), "{violations:?}");
}

#[tokio::test]
async fn bad_input_unknown_accounts_and_wrong_keys_have_their_codes() {
    let mut f = funded(10_000).await;
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&f.db.pool().await)
            .await
            .unwrap()
    };
    let before = events().await;
    // Invalid fields, by the same paths as the HTTP API.
    let mut sample = bulk_message(&bulk(vec![transfer("1.00"), transfer("1.005")]), None);
    let status = f
        .client
        .transfer_bulk(with_key(sample.clone(), &f.key))
        .await
        .unwrap_err();
    assert_field(&status, "credit_transfers[1].amount");
    sample.organization_iban = String::new();
    let status = f.client.transfer_bulk(with_key(sample, &f.key)).await.unwrap_err();
    assert_field(&status, "organization_iban");
    let status = f
        .client
        .deposit(with_key(
            pb::DepositRequest {
                iban: ACME_IBAN.into(),
                amount: "-5".into(),
                ..Default::default()
            },
            &f.key,
        ))
        .await
        .unwrap_err();
    assert_field(&status, "amount");
    // Unknown account.
    let status = f
        .client
        .get_account(with_key(
            pb::GetAccountRequest {
                iban: "GB82WEST12345698765432".into(),
                min_position: None,
            },
            &f.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // An IBAN opened twice.
    let status = f
        .client
        .open_account(with_key(
            pb::OpenAccountRequest {
                organization_name: ACME_NAME.into(),
                iban: ACME_IBAN.into(),
                bic: ACME_BIC.into(),
                ..Default::default()
            },
            &f.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    // No key, a wrong key, an account key out of its scope.
    let status = f
        .client
        .get_account(pb::GetAccountRequest {
            iban: ACME_IBAN.into(),
            min_position: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = f
        .client
        .get_account(with_key(
            pb::GetAccountRequest {
                iban: ACME_IBAN.into(),
                min_position: None,
            },
            "ldgr_nope",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let output = run_ledger(
        &["keys", "create", "--account", ACME_IBAN],
        &[("DATABASE_URL", &f.db.url()), ("LEDGER_IBAN_CHECK", "structure")],
    );
    let account_key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let own = f
        .client
        .transfer_bulk(with_key(
            bulk_message(&bulk(vec![transfer("1.00")]), None),
            &account_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.balance_after_cents, 9_900);
    let status = f
        .client
        .deposit(with_key(
            pb::DepositRequest {
                iban: ACME_IBAN.into(),
                amount: "5".into(),
                ..Default::default()
            },
            &account_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = f
        .client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &account_key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Another account: not even whether it exists.
    let other = "GB82WEST12345698765432";
    let mut foreign = bulk_message(&bulk(vec![transfer("1.00")]), None);
    foreign.organization_iban = other.into();
    let status = f
        .client
        .transfer_bulk(with_key(foreign.clone(), &account_key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = f.client.transfer_bulk(foreign).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = f
        .client
        .get_account(with_key(
            pb::GetAccountRequest {
                iban: other.into(),
                min_position: None,
            },
            &account_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = f
        .client
        .list_transactions(with_key(
            pb::ListTransactionsRequest {
                iban: other.into(),
                ..Default::default()
            },
            &account_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(events().await, before + 1, "only the account key's own bulk");

    // A message over the size limit: without a key it is refused before it
    // is read; with one, it is refused as too large.
    let mut huge = bulk_message(&bulk(vec![transfer("1.00"); 70_000]), None);
    for t in &mut huge.credit_transfers {
        t.description = Some("d".repeat(140));
    }
    assert!(prost::Message::encoded_len(&huge) > 10 * 1024 * 1024);
    let status = f.client.transfer_bulk(huge.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = f.client.transfer_bulk(with_key(huge, &f.key)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(events().await, before + 1);

    // gRPC calls are counted like HTTP requests.
    let metrics = f
        .server
        .client
        .get(format!("{}/metrics", f.server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"ledger_grpc_requests_total{method="TransferBulk",code="InvalidArgument"} 2"#,
        r#"ledger_grpc_requests_total{method="GetAccount",code="Unauthenticated"} 2"#,
        r#"ledger_grpc_requests_total{method="Deposit",code="PermissionDenied"} 1"#,
        r#"ledger_grpc_requests_total{method="TransferBulk",code="PermissionDenied"} 1"#,
        r#"ledger_grpc_requests_total{method="TransferBulk",code="Unauthenticated"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

fn feed_order(after: &str) -> (i64, i64) {
    let (tx, position) = after.split_once('-').unwrap();
    (tx.parse().unwrap(), position.parse().unwrap())
}

async fn next(stream: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the stream stays open")
}

/// A subscription gets the log from its start, then each event appended
/// afterwards as it commits: in order, none missed, none twice.
#[tokio::test]
async fn a_subscription_receives_later_events_exactly_once() {
    let mut f = funded(10_000_000).await;
    let mut stream = f
        .client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &f.key))
        .await
        .unwrap()
        .into_inner();
    let opened = next(&mut stream).await;
    assert_eq!(opened.r#type, "AccountOpened");
    let deposited = next(&mut stream).await;
    assert_eq!(deposited.r#type, "FundsDeposited");

    // Appended after the subscription, from several clients at once.
    let appended = join_all((0..12).map(|i| {
        let mut client = f.client.clone();
        let request = with_key(bulk_message(&bulk(vec![transfer(&format!("{i}.01"))]), None), &f.key);
        async move { client.transfer_bulk(request).await.unwrap().into_inner().bulk_id }
    }))
    .await;
    let mut seen = Vec::new();
    let mut last = feed_order(&deposited.after);
    for _ in 0..appended.len() {
        let event = next(&mut stream).await;
        assert_eq!(event.r#type, "BulkTransferBooked");
        // The feed's order: (transaction, position), strictly increasing.
        let order = feed_order(&event.after);
        assert!(order > last, "{order:?} after {last:?}");
        last = order;
        let data: Value = serde_json::from_str(&event.data_json).unwrap();
        seen.push(data["bulk_id"].as_str().unwrap().to_owned());
        let metadata: Value = serde_json::from_str(&event.metadata_json).unwrap();
        assert_eq!(metadata["actor"], "api_key");
    }
    let mut expected = appended.clone();
    expected.sort();
    seen.sort();
    assert_eq!(seen, expected, "every bulk once");
    // Nothing more: no repeats.
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(extra.is_err(), "an unexpected event: {extra:?}");

    // Resuming from an event's `after` continues right after it.
    let mut resumed = f
        .client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: deposited.after }, &f.key))
        .await
        .unwrap()
        .into_inner();
    let mut again = Vec::new();
    for _ in 0..appended.len() {
        let event = next(&mut resumed).await;
        let data: Value = serde_json::from_str(&event.data_json).unwrap();
        again.push(data["bulk_id"].as_str().unwrap().to_owned());
    }
    again.sort();
    assert_eq!(again, expected);
    // A malformed cursor is the call's status, not a broken stream.
    let status = f
        .client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "x".into() }, &f.key))
        .await
        .unwrap_err();
    assert_field(&status, "after");
}

/// A key revoked while its subscription is open ends the stream.
#[tokio::test]
async fn revoking_a_key_ends_its_open_stream() {
    let mut f = funded(100).await;
    let env = [("DATABASE_URL", f.db.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = run_ledger(&["keys", "create", "--admin", "--name", "auditor"], &env);
    let auditor = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let mut stream = f
        .client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &auditor))
        .await
        .unwrap()
        .into_inner();
    next(&mut stream).await;
    next(&mut stream).await;
    let id = uuid::Uuid::parse_str(&auditor[5..37]).unwrap().to_string();
    assert!(run_ledger(&["keys", "revoke", &id], &env).status.success());
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends after the revocation");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// With pages smaller than the log (LEDGER_PAGE_SIZE_MAX=5), a subscription
/// pages through full pages and still sends every event once, in order.
#[tokio::test]
async fn a_subscription_pages_through_a_log_longer_than_a_page() {
    let db = TestDb::new().await;
    let server = Binary::serve(&[
        ("DATABASE_URL", &db.url()),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_PAGE_SIZE_MAX", "5"),
    ]);
    open_acme(&server.client, &server.base, 1_000_000).await;
    for _ in 0..11 {
        let response = server
            .client
            .post(format!("{}/v1/transfer/bulk", server.base))
            .json(&bulk(vec![transfer("1.00")]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let mut client = connect(&server).await;
    let mut stream = client
        .subscribe_events(with_key(
            pb::SubscribeEventsRequest { after: "0".into() },
            server.key.as_deref().unwrap(),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut last = (0, 0);
    let mut positions = Vec::new();
    for _ in 0..13 {
        let event = next(&mut stream).await;
        let order = feed_order(&event.after);
        assert!(order > last);
        last = order;
        positions.push(event.position);
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 13, "13 distinct events");
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(extra.is_err(), "an unexpected event: {extra:?}");
}

/// SIGTERM with a subscription open: the stream ends with UNAVAILABLE (the
/// subscriber resumes elsewhere) and the server exits 0 promptly.
#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let mut f = funded(100).await;
    let mut stream = f
        .client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &f.key))
        .await
        .unwrap()
        .into_inner();
    next(&mut stream).await;
    next(&mut stream).await;
    let pid = nix::unistd::Pid::from_raw(f.server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends");
    match ended {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(event)) => panic!("an unexpected event {event:?}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = f.server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A length-prefixed gRPC message's payload, as raw bytes: what a client
/// that learned the types from reflection sends and receives.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Lists the services through server reflection, learns LedgerService's
/// types from the descriptors it serves, and calls GetAccount with a
/// dynamic message — knowing nothing of the .proto beforehand.
#[tokio::test]
async fn a_reflection_client_lists_and_calls_the_service() {
    use prost_reflect::DescriptorPool;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let f = funded(12_345).await;
    let address = f.server.grpc.clone().unwrap();
    let channel = Channel::from_shared(address).unwrap().connect().await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("ledger.v1.LedgerService".into())),
    ];
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || -> ServerReflectionResponse { answers.message().await.unwrap().unwrap() };
    let Some(MessageResponse::ListServicesResponse(list)) = next().await.message_response else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"ledger.v1.LedgerService".to_owned()), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = next().await.message_response else {
        panic!("file descriptors")
    };
    let mut pool = DescriptorPool::new();
    for file in files.file_descriptor_proto {
        pool.decode_file_descriptor_proto(file.as_slice()).unwrap();
    }
    let service = pool.get_service_by_name("ledger.v1.LedgerService").unwrap();
    let methods: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
    for method in [
        "TransferBulk",
        "OpenAccount",
        "Deposit",
        "GetAccount",
        "ListTransactions",
        "SubscribeEvents",
    ] {
        assert!(methods.contains(&method.to_owned()), "{methods:?}");
    }

    let output = reflected_get_account(&pool, channel, &f.key).await;
    assert_eq!(
        output.get_field_by_name("balance_cents").unwrap().as_i64(),
        Some(12_345)
    );
    assert_eq!(output.get_field_by_name("iban").unwrap().as_str(), Some(ACME_IBAN));
}

/// Calls GetAccount for ACME with a message built from a reflected
/// descriptor, and decodes the answer the same way.
async fn reflected_get_account(
    pool: &prost_reflect::DescriptorPool,
    channel: Channel,
    key: &str,
) -> prost_reflect::DynamicMessage {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value as Field};

    let service = pool.get_service_by_name("ledger.v1.LedgerService").unwrap();
    let method = service.methods().find(|m| m.name() == "GetAccount").unwrap();
    let mut input = DynamicMessage::new(method.input());
    input.set_field_by_name("iban", Field::String(ACME_IBAN.into()));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = format!("/{}/{}", service.full_name(), method.name()).parse().unwrap();
    let response = grpc
        .unary(with_key(input.encode_to_vec(), key), path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    DynamicMessage::decode(method.output(), response.as_slice()).unwrap()
}

/// The same through server reflection v1alpha, the only version Evans,
/// grpc_cli, Postman and Python's grpcio-reflection speak: the services are
/// listed, the descriptors served, and a call made with them works.
#[tokio::test]
async fn a_v1alpha_reflection_client_lists_and_calls_the_service() {
    use prost_reflect::DescriptorPool;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};

    let f = funded(54_321).await;
    let channel = Channel::from_shared(f.server.grpc.clone().unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("ledger.v1.LedgerService".into())),
    ];
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("the server speaks reflection v1alpha")
        .into_inner();
    let mut next = async || -> ServerReflectionResponse { answers.message().await.unwrap().unwrap() };
    let Some(MessageResponse::ListServicesResponse(list)) = next().await.message_response else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"ledger.v1.LedgerService".to_owned()), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = next().await.message_response else {
        panic!("file descriptors")
    };
    let mut pool = DescriptorPool::new();
    for file in files.file_descriptor_proto {
        pool.decode_file_descriptor_proto(file.as_slice()).unwrap();
    }
    let output = reflected_get_account(&pool, channel, &f.key).await;
    assert_eq!(
        output.get_field_by_name("balance_cents").unwrap().as_i64(),
        Some(54_321)
    );
}

/// SPEC §2.4: requests whose parsed commands are equal are the same
/// request, whichever API brought them and however their amounts were
/// spelled. A deposit keyed over HTTP with `1.5` replays over gRPC with
/// `"1.50"` and over HTTP with `"1.50"`; a bulk keyed over gRPC replays
/// over HTTP with the amount as a JSON number. Each is applied once.
#[tokio::test]
async fn the_same_command_over_http_and_grpc_replays_however_it_is_spelled() {
    let mut f = funded(10_000_000).await;
    let deposits = format!("{}/v1/accounts/{ACME_IBAN}/deposits", f.server.base);
    let body: Value = serde_json::from_str(r#"{"amount": 1.5, "reference": "once"}"#).unwrap();
    let response = f
        .server
        .client
        .post(&deposits)
        .header("Idempotency-Key", "deposit-once")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, first) = into_parts(response).await;
    assert_eq!(status, 201, "{first}");

    let replayed = f
        .client
        .deposit(with_key(
            pb::DepositRequest {
                iban: ACME_IBAN.into(),
                amount: "1.50".into(),
                currency: None,
                reference: Some("once".into()),
                idempotency_key: Some("deposit-once".into()),
            },
            &f.key,
        ))
        .await
        .expect("the same deposit replays over gRPC")
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(replayed.transaction_id, first["transaction_id"].as_str().unwrap());

    let response = f
        .server
        .client
        .post(&deposits)
        .header("Idempotency-Key", "deposit-once")
        .json(&serde_json::json!({"reference": "once", "amount": "1.50"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (status, again) = into_parts(response).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again, first);
    assert_eq!(f.balance().await, 10_000_150, "deposited once");

    let json = fixture("sample1.json");
    let booked = f
        .client
        .transfer_bulk(with_key(bulk_message(&json, Some("bulk-once")), &f.key))
        .await
        .unwrap()
        .into_inner();
    let mut respelled = json.clone();
    for transfer in respelled["credit_transfers"].as_array_mut().unwrap() {
        let amount = transfer["amount"].as_str().unwrap().to_owned();
        transfer["amount"] = serde_json::from_str(&amount).unwrap();
    }
    let response = f
        .server
        .client
        .post(format!("{}/v1/transfer/bulk", f.server.base))
        .header("Idempotency-Key", "bulk-once")
        .json(&respelled)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (status, again) = into_parts(response).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["bulk_id"], booked.bulk_id.as_str());
    assert_eq!(f.balance().await, 10_000_150 - booked.total_cents, "booked once");

    // Another command under the same key is still a conflict.
    let response = f
        .server
        .client
        .post(&deposits)
        .header("Idempotency-Key", "deposit-once")
        .json(&serde_json::json!({"amount": "1.51", "reference": "once"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
}

/// gRPC parity for double entry (SPEC §9): a bulk's response carries its
/// position, GetAccount with that `min_position` sees the payee credited,
/// GetTrialBalance sums to zero, and an account key may not read it.
#[tokio::test]
async fn grpc_reads_its_writes_and_the_trial_balance() {
    let mut f = funded(100_000).await;
    let globex = "DE89370400440532013000";
    f.client
        .open_account(with_key(
            pb::OpenAccountRequest {
                organization_name: "Globex GmbH".into(),
                iban: globex.into(),
                bic: "COBADEFFXXX".into(),
                currency: None,
                idempotency_key: None,
            },
            &f.key,
        ))
        .await
        .unwrap();
    let booked = f
        .client
        .transfer_bulk(with_key(
            pb::TransferBulkRequest {
                organization_name: ACME_NAME.into(),
                organization_bic: ACME_BIC.into(),
                organization_iban: ACME_IBAN.into(),
                credit_transfers: vec![pb::CreditTransfer {
                    amount: "300.00".into(),
                    currency: "EUR".into(),
                    counterparty_name: "Globex GmbH".into(),
                    counterparty_bic: "COBADEFFXXX".into(),
                    counterparty_iban: globex.into(),
                    description: Some("Invoice".into()),
                    end_to_end_id: Some("INV-2026-117".into()),
                }],
                idempotency_key: None,
            },
            &f.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let position = booked.position.expect("a bulk's response carries its position");
    let payee = f
        .client
        .get_account(with_key(
            pb::GetAccountRequest {
                iban: globex.into(),
                min_position: Some(position),
            },
            &f.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payee.balance_cents, 30_000, "read your writes over gRPC");
    // The payer's end-to-end reference travels to the payee's history.
    let credits = f
        .client
        .list_transactions(with_key(
            pb::ListTransactionsRequest {
                iban: globex.into(),
                limit: Some(1),
                cursor: None,
                min_position: Some(position),
            },
            &f.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(credits.items[0].kind, "transfer_received");
    assert_eq!(credits.items[0].end_to_end_id.as_deref(), Some("INV-2026-117"));
    let balance = f
        .client
        .get_trial_balance(with_key(
            pb::GetTrialBalanceRequest {
                min_position: Some(position),
            },
            &f.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let eur = balance.currencies.iter().find(|c| c.currency == "EUR").unwrap();
    assert_eq!(
        (eur.customers_cents, eur.settlement_cents, eur.sum_cents),
        (100_000, -100_000, 0)
    );
    let bad = f
        .client
        .get_account(with_key(
            pb::GetAccountRequest {
                iban: globex.into(),
                min_position: Some(-1),
            },
            &f.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let created = run_ledger(
        &["keys", "create", "--account", ACME_IBAN],
        &[("DATABASE_URL", &f.db.url())],
    );
    let account_key = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let refused = f
        .client
        .get_trial_balance(with_key(
            pb::GetTrialBalanceRequest { min_position: None },
            &account_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

/// Open subscriptions are bounded (issue #15, item 7): past
/// `LEDGER_SUBSCRIPTIONS_MAX`, `UNAVAILABLE`; when one ends, its place is
/// free again.
#[tokio::test]
async fn open_subscriptions_are_bounded() {
    let db = TestDb::new().await;
    let server = Binary::serve(&[
        ("DATABASE_URL", &db.url()),
        ("LEDGER_IBAN_CHECK", "structure"),
        ("LEDGER_SUBSCRIPTIONS_MAX", "1"),
    ]);
    let key = server.key.clone().unwrap();
    let mut client = connect(&server).await;
    let first = client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &key))
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &key))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match client
            .subscribe_events(with_key(pb::SubscribeEventsRequest { after: "0".into() }, &key))
            .await
        {
            Ok(_) => break,
            Err(status) if status.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the ended subscription's place is free again: {status:?}"),
        }
    }
}
