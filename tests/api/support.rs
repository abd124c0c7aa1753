//! Test support: a real PostgreSQL (a throw-away cluster started with the
//! same code as the embedded default, or `DATABASE_URL` when set), a fresh
//! database per test, and the application served in-process or as the real
//! `ledger` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ledger::app::auth::{self, Scope};
use ledger::app::{Ledger, Settings};
use ledger::domain::IbanCheck;
use ledger::pg::Cluster;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub const ACME_IBAN: &str = "FR10474608000002006107XXXXX";
pub const ACME_BIC: &str = "OIVUSCLQXXX";
pub const ACME_NAME: &str = "ACME Corp";

/// The server every test of this process uses, and the template database
/// (already migrated) that each test's database is copied from.
struct Server {
    /// Keeps the throw-away cluster alive for the whole process.
    _cluster: Option<Cluster>,
    maintenance: PgConnectOptions,
    template: String,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (cluster, maintenance) = match std::env::var("DATABASE_URL") {
            Ok(url) => (None, PgConnectOptions::from_str(&url).expect("DATABASE_URL parses")),
            Err(_) => {
                let cluster = Cluster::temporary().expect("start a throw-away PostgreSQL cluster");
                let options = cluster.connect_options("postgres");
                (Some(cluster), options)
            }
        };
        let template = format!("ledger_template_{}", std::process::id());
        // Pools belong to the runtime that made them, and each test has its
        // own: do this one-time setup on a runtime of its own.
        let setup_maintenance = maintenance.clone();
        let setup_template = template.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = setup_maintenance.connect().await.expect("connect to the test server");
                sqlx::query(&format!("DROP DATABASE IF EXISTS {setup_template}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                sqlx::query(&format!("CREATE DATABASE {setup_template}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let pool = PgPool::connect_with(setup_maintenance.clone().database(&setup_template))
                    .await
                    .unwrap();
                ledger::db::migrate(&pool).await.expect("migrations apply");
                pool.close().await;
            });
        })
        .join()
        .expect("template setup");
        Server {
            _cluster: cluster,
            maintenance,
            template,
        }
    })
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub options: PgConnectOptions,
    pub name: String,
}

impl TestDb {
    /// A fresh database with the schema (copied from a migrated template).
    pub async fn new() -> TestDb {
        TestDb::create(&server().template).await
    }

    /// A fresh database with nothing in it: no migration applied.
    pub async fn empty() -> TestDb {
        TestDb::create("template0").await
    }

    async fn create(template: &str) -> TestDb {
        let server = server();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&server.maintenance)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        TestDb {
            options: server.maintenance.clone().database(&name),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect_with(self.options.clone())
            .await
            .expect("connect to the test database")
    }

    /// A URL a child process can use as DATABASE_URL.
    pub fn url(&self) -> String {
        let o = &self.options;
        let host = o.get_host();
        let user = o.get_username();
        let port = o.get_port();
        if let Some(socket) = o.get_socket() {
            format!(
                "postgres://{user}@localhost:{port}/{}?host={}&sslmode=disable",
                self.name,
                socket.display()
            )
        } else {
            match std::env::var("DATABASE_URL") {
                Ok(url) => {
                    let mut parsed = url::Url::parse(&url).expect("DATABASE_URL is a URL");
                    parsed.set_path(&self.name);
                    parsed.to_string()
                }
                Err(_) => format!("postgres://{user}@{host}:{port}/{}", self.name),
            }
        }
    }
}

/// The application served in-process on an ephemeral port.
pub struct TestApp {
    pub base: String,
    pub ledger: Arc<Ledger>,
    /// Sends the admin key with every request.
    pub client: reqwest::Client,
    pub admin_key: String,
    pub pool: PgPool,
    pub db: TestDb,
    /// Dropped with the app: the server then shuts down.
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub fn seed_settings() -> Settings {
    Settings {
        iban_check: IbanCheck::Structure,
        ..Settings::default()
    }
}

impl TestApp {
    /// Served with the seed's settings (structure-only IBAN check).
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(seed_settings()).await
    }

    /// The real server ([`ledger::server::run`], with every background
    /// task) on a runtime and thread of its own, as a separate process
    /// would be: a test that blocks its own thread (waiting for a
    /// subprocess) never stalls the server. Stopped when the app is dropped.
    pub async fn spawn_with(settings: Settings) -> TestApp {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let (started, on_start) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = db.options.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                // The pool `ledger serve` makes (its checks before handing a
                // connection out included).
                let server_pool = ledger::db::connect(options, &ledger::db::PoolSettings::default())
                    .await
                    .expect("connect the server to the test database");
                let ledger = Arc::new(Ledger::new(server_pool, settings));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let _ = started.send((Arc::clone(&ledger), address));
                let shutdown = async move {
                    let _ = stopped.await;
                };
                ledger::server::run(ledger, listener, None, shutdown)
                    .await
                    .expect("the test server fails");
            });
        });
        let (ledger, address) = on_start.await.expect("the test server starts");
        let admin_key = create_key(&pool, Scope::Admin).await;
        TestApp {
            base: format!("http://{address}"),
            ledger,
            client: client_with_key(Some(&admin_key)),
            admin_key,
            pool,
            db,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await.unwrap();
        into_parts(response).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        into_parts(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// Opens the seed's ACME account and deposits `cents` into it.
    pub async fn acme_with(&self, cents: i64) {
        open_acme(&self.client, &self.base, cents).await;
    }

    pub async fn balance_cents(&self, iban: &str) -> i64 {
        let (status, body) = self.get(&format!("/v1/accounts/{iban}")).await;
        assert_eq!(status, 200, "{body}");
        body["balance_cents"].as_i64().unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// A client without credentials.
pub fn client() -> reqwest::Client {
    client_with_key(None)
}

/// A client sending `Authorization: Bearer <key>` with every request.
pub fn client_with_key(key: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A new API key's full text, created through the library.
pub async fn create_key(pool: &PgPool, scope: Scope) -> String {
    let (_, secret) = auth::create_key(pool, &scope, Some("tests")).await.unwrap();
    secret.expose().to_owned()
}

pub async fn into_parts(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

pub async fn open_acme(client: &reqwest::Client, base: &str, cents: i64) {
    let response = client
        .post(format!("{base}/v1/accounts"))
        .json(&json!({"organization_name": ACME_NAME, "iban": ACME_IBAN, "bic": ACME_BIC, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    if cents > 0 {
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let response = client
            .post(format!("{base}/v1/accounts/{ACME_IBAN}/deposits"))
            .json(&json!({"amount": amount, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    }
}

pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One transfer of `amount` in the seed's format.
pub fn transfer(amount: &str) -> Value {
    json!({"amount": amount, "currency": "EUR", "counterparty_name": "Bip Bip",
           "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE383680981021245685",
           "description": "Wonderland/4410"})
}

pub fn bulk(transfers: Vec<Value>) -> Value {
    json!({"organization_name": ACME_NAME, "organization_bic": ACME_BIC, "organization_iban": ACME_IBAN,
           "credit_transfers": transfers})
}

/// The real `ledger` binary, killed when dropped.
pub struct Binary {
    pub child: Child,
    pub base: String,
    /// `http://address` of the gRPC API, unless the environment turned it off.
    pub grpc: Option<String>,
    /// The admin key `serve` printed on its first start (embedded default).
    pub first_key: Option<String>,
    /// An admin key (the first key, or one made with `ledger keys create
    /// --admin`); `None` when authentication is disabled.
    pub key: Option<String>,
    /// Sends `key` with every request.
    pub client: reqwest::Client,
}

/// `ledger` (the binary under test) as a command whose process gets SIGKILL
/// when the thread that starts it ends (`setpriv --pdeathsig`, util-linux,
/// when installed): a test run killed midway (Ctrl-C, `-9`, output piped
/// into `head`) leaves no `ledger serve` behind, which a drop alone does not
/// prevent.
/// Start it from the test's own thread, which lives as long as the test,
/// not from `spawn_blocking` or a thread of its own.
pub fn ledger_dying_with_the_test() -> Command {
    dying_with_the_test(env!("CARGO_BIN_EXE_ledger"))
}

/// Any program as a command dying with the test, as
/// [`ledger_dying_with_the_test`] does for `ledger` (e.g. the relay tests'
/// `nats-server`).
pub fn dying_with_the_test(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    // util-linux before 2.33 has setpriv without --pdeathsig: ask it once.
    static TAKES_PDEATHSIG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let usable = *TAKES_PDEATHSIG.get_or_init(|| {
        Command::new(setpriv)
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    });
    if usable {
        let mut command = Command::new(setpriv);
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Binary {
    /// `ledger serve` on an ephemeral port with the given environment, and
    /// an admin key to call it with.
    pub fn serve(envs: &[(&str, &str)]) -> Binary {
        let mut command = ledger_dying_with_the_test();
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("LEDGER_LISTEN", "127.0.0.1:0")
            .env("LEDGER_GRPC_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in envs {
            command.env(key, value);
        }
        let disabled = envs.iter().any(|(k, v)| *k == "LEDGER_AUTH" && *v == "disabled");
        // Only where the database is: the server's other settings (a 1 ms
        // statement timeout...) are not the key's business.
        let database: Vec<(&str, &str)> = envs
            .iter()
            .copied()
            .filter(|(k, _)| matches!(*k, "DATABASE_URL" | "LEDGER_DATA_DIR"))
            .collect();
        let create_key = || {
            let output = run_ledger(&["keys", "create", "--admin"], &database);
            assert!(output.status.success(), "keys create: {output:?}");
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        };
        // With a database of its own, a key first (so the server finds one);
        // the embedded default's first start prints its own.
        let mut key = (!disabled && envs.iter().any(|(k, _)| *k == "DATABASE_URL")).then(create_key);
        let mut child = command.spawn().expect("start ledger serve");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut first_key, mut grpc) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(key) = line.strip_prefix("export LEDGER_API_KEY=") {
                    first_key = Some(key.to_owned());
                }
                if let Some(address) = line.strip_prefix("ledger gRPC listening on ") {
                    grpc = Some(address.to_owned());
                }
                if let Some(address) = line.strip_prefix("ledger listening on ") {
                    let _ = sender.send((address.to_owned(), first_key.take(), grpc.take()));
                }
            }
        });
        let (base, first_key, grpc) = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("ledger serve printed its address");
        if key.is_none() && !disabled {
            key = Some(first_key.clone().unwrap_or_else(create_key));
        }
        Binary {
            child,
            base,
            grpc,
            first_key,
            client: client_with_key(key.as_deref()),
            key,
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample of the binary's `/metrics`, if it has it.
pub async fn metric_sample(binary: &Binary, sample: &str) -> Option<f64> {
    let text = binary
        .client
        .get(format!("{}/metrics", binary.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.trim().parse().ok()))
}

/// Runs the `ledger` binary to completion.
pub fn run_ledger(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledger"));
    command.args(args).env_remove("DATABASE_URL").env("RUST_LOG", "warn");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run ledger")
}

/// Every projection table's rows as text, in a stable order: two snapshots
/// are equal exactly when the read models are, row for row.
pub async fn projection_rows(pool: &sqlx::PgPool) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for query in [
        "SELECT b::text FROM balances b ORDER BY account_id",
        "SELECT t::text FROM transactions t ORDER BY account_id, position, seq",
        "SELECT c::text FROM counterparties c ORDER BY account_id, counterparty_iban",
    ] {
        all.push(sqlx::query_scalar(query).fetch_all(pool).await.unwrap());
    }
    all
}

/// Runs the posting process until its checkpoint is at the end of the log.
/// One `catch_up` can stop short of it: the feed only hands out events
/// below the horizon, which a transaction running elsewhere in the shared
/// test cluster can hold back for a moment.
pub async fn post_everything(pool: &PgPool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        ledger::posting::catch_up(pool).await.unwrap();
        let (_, lag) = ledger::posting::lag(pool).await.unwrap();
        if lag == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the posting process is still {lag} events behind"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A test's own cluster (for settings a shared one cannot take), stopped
/// and removed however the test ends: a failed assertion included (on
/// drop), and the whole run killed midway (by the watchdog of
/// [`Cluster::remove_at_exit`], set up before initdb), so no postmaster outlives
/// the run.
pub struct OwnCluster {
    pub cluster: Cluster,
    root: std::path::PathBuf,
}

impl OwnCluster {
    pub async fn start(purpose: &str) -> OwnCluster {
        let root = std::env::temp_dir().join(format!("ledger-{purpose}-{}", uuid::Uuid::new_v4().simple()));
        Cluster::remove_at_exit(&root).unwrap();
        let cluster = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || Cluster::ensure(&root))
                .await
                .unwrap()
                .unwrap()
        };
        OwnCluster { cluster, root }
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started
    /// beside it, stopped and removed like it.
    pub async fn standby(&self, purpose: &str) -> OwnCluster {
        let root = std::env::temp_dir().join(format!("ledger-{purpose}-{}", uuid::Uuid::new_v4().simple()));
        Cluster::remove_at_exit(&root).unwrap();
        let cluster = {
            let (primary, root) = (self.cluster.clone(), root.clone());
            tokio::task::spawn_blocking(move || Cluster::standby_of(&primary, &root))
                .await
                .unwrap()
                .unwrap()
        };
        OwnCluster { cluster, root }
    }

    /// Starts the server again after [`Cluster::stop`].
    pub async fn start_after_stop(&mut self) {
        self.start_again().await;
    }

    /// Stops and starts the server again (for settings that need a restart).
    pub async fn restart(&mut self) {
        self.cluster.stop().unwrap();
        self.start_again().await;
    }

    /// Crashes the server (`pg_ctl stop -m immediate`) and starts it again:
    /// it recovers from its WAL.
    pub async fn crash_and_recover(&mut self) {
        self.cluster.crash().unwrap();
        self.start_again().await;
    }

    async fn start_again(&mut self) {
        let root = self.root.clone();
        self.cluster = tokio::task::spawn_blocking(move || Cluster::ensure(&root))
            .await
            .unwrap()
            .unwrap();
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
