//! Property: whatever arrives — arbitrary or mutated bodies, headers, paths,
//! query strings — the API never answers 5xx, never panics, and a 4xx never
//! changes a balance or appends an event.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::support::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[0-9]{0,20}(\\.[0-9]{0,6})?".prop_map(Value::String),
        "\\PC{0,40}".prop_map(Value::String),
        Just(json!("1e400")),
        Just(json!(-0.0001)),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid bulk with one field replaced, removed, or the whole body swapped.
fn bulk_body() -> impl Strategy<Value = Vec<u8>> {
    let fields = prop::sample::select(vec![
        "organization_name",
        "organization_bic",
        "organization_iban",
        "credit_transfers",
        "amount",
        "currency",
        "counterparty_name",
        "counterparty_bic",
        "counterparty_iban",
        "description",
    ]);
    prop_oneof![
        (fields.clone(), json_value()).prop_map(|(field, value)| {
            let mut body = bulk(vec![transfer("1.00"), transfer("2.00")]);
            if body.get(field).is_some() {
                body[field] = value;
            } else {
                body["credit_transfers"][1][field] = value;
            }
            serde_json::to_vec(&body).unwrap()
        }),
        fields.prop_map(|field| {
            let mut body = bulk(vec![transfer("1.00")]);
            if body.as_object_mut().unwrap().remove(field).is_none()
                && let Some(first) = body["credit_transfers"].get_mut(0).and_then(Value::as_object_mut)
            {
                first.remove(field);
            }
            serde_json::to_vec(&body).unwrap()
        }),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    query: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    authorization: Authorization,
    body: Vec<u8>,
}

/// The admin key (the client's default), or another credential instead.
#[derive(Debug, Clone)]
enum Authorization {
    Admin,
    /// The admin key with one character changed at this position.
    AdminMutated(usize),
    Header(String),
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]);
    let segment = prop_oneof![
        Just(ACME_IBAN.to_owned()),
        Just("GB82WEST12345698765432".to_owned()),
        "[A-Za-z0-9%. _-]{0,40}",
    ];
    let path = (
        prop::sample::select(vec![
            "/v1/transfer/bulk",
            "/v1/accounts",
            "/v1/accounts/{}",
            "/v1/accounts/{}/deposits",
            "/v1/accounts/{}/transactions",
            "/v1/accounts/{}/balance",
            "/v1/accounts/{}/audit",
            "/v1/events",
            "/{}",
        ]),
        segment,
    )
        .prop_map(|(template, segment)| template.replace("{}", &segment.replace(['/', '?', '#', ' '], "")));
    let query = prop_oneof![
        Just(String::new()),
        "(limit|cursor|after|as_of|position)=[-0-9A-Za-z:.%]{0,20}",
        "[a-z=&%0-9]{0,30}",
    ];
    let content_type = prop::option::of(prop::sample::select(vec![
        "application/json".to_owned(),
        "text/plain".to_owned(),
        "application/problem+json".to_owned(),
        "application/json; charset=utf-8".to_owned(),
    ]));
    let key = prop::option::of("[ -~]{0,300}");
    let authorization = prop_oneof![
        4 => Just(Authorization::Admin),
        1 => (0_usize..81).prop_map(Authorization::AdminMutated),
        1 => "(Bearer |bearer |Basic )?[ -~]{0,100}".prop_map(Authorization::Header),
    ];
    (method, path, query, content_type, key, authorization, bulk_body()).prop_map(
        |(method, path, query, content_type, idempotency_key, authorization, body)| Request {
            method,
            path,
            query,
            content_type,
            idempotency_key,
            authorization,
            body,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_input_causes_a_5xx_or_a_change_on_a_4xx(requests in prop::collection::vec(request(), 1..8)) {
        let outcome: Result<(), TestCaseError> = runtime().block_on(async {
            let app = app().await;
            for request in requests {
                let events_before = app.event_count().await;
                let balance_before = app.balance_cents(ACME_IBAN).await;
                let url = if request.query.is_empty() {
                    app.url(&request.path)
                } else {
                    format!("{}?{}", app.url(&request.path), request.query)
                };
                let mut builder = app.client.request(request.method.parse().unwrap(), url).body(request.body.clone());
                if let Some(content_type) = &request.content_type {
                    builder = builder.header("content-type", content_type);
                }
                if let Some(key) = &request.idempotency_key {
                    builder = builder.header("Idempotency-Key", key);
                }
                match &request.authorization {
                    Authorization::Admin => {}
                    Authorization::AdminMutated(at) => {
                        let mut key = app.admin_key.clone().into_bytes();
                        let at = at % key.len();
                        key[at] = if key[at] == b'x' { b'y' } else { b'x' };
                        builder = builder.header("Authorization", format!("Bearer {}", String::from_utf8(key).unwrap()));
                    }
                    Authorization::Header(value) => builder = builder.header("Authorization", value),
                }
                let response = builder.send().await.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                prop_assert!(status < 500, "{request:?} answered {status}: {body}");
                if (400..500).contains(&status) {
                    prop_assert_eq!(app.event_count().await, events_before, "{:?}: {}", request, body);
                    prop_assert_eq!(app.balance_cents(ACME_IBAN).await, balance_before, "{:?}", request);
                    prop_assert!(body.is_empty() || serde_json::from_str::<Value>(&body).is_ok(), "problem+json: {}", body);
                }
            }
            Ok(())
        });
        outcome?;
    }
}

/// One runtime for every case, so the server and its pool outlive each case.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// One funded account per process, reused across cases (a fresh database
/// for each of 256 cases would dominate the run).
async fn app() -> &'static TestApp {
    static APP: tokio::sync::OnceCell<&'static TestApp> = tokio::sync::OnceCell::const_new();
    APP.get_or_init(|| async {
        let app = Box::leak(Box::new(TestApp::spawn().await));
        app.acme_with(1_000_000).await;
        &*app
    })
    .await
}
