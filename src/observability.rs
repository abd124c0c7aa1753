//! Metrics (Prometheus text format at `GET /metrics`) and their names.
//!
//! The recorder is process-global; it is installed once, on first use, so
//! several routers in one process (the tests) share it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "ledger_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "ledger_http_request_duration_seconds";
pub const GRPC_REQUESTS: &str = "ledger_grpc_requests_total";
pub const GRPC_REQUEST_DURATION: &str = "ledger_grpc_request_duration_seconds";
pub const COMMANDS: &str = "ledger_commands_total";
pub const EVENTS_APPENDED: &str = "ledger_events_appended_total";
pub const BATCH_COMMANDS: &str = "ledger_group_commit_batch_commands";
pub const BATCH_DURATION: &str = "ledger_group_commit_batch_duration_seconds";
pub const BATCH_STREAMS: &str = "ledger_group_commit_batch_accounts";
pub const BATCH_APPEND_DURATION: &str = "ledger_group_commit_append_duration_seconds";
pub const PROJECTION_POSITION: &str = "ledger_projection_position";
pub const PROJECTION_LAG: &str = "ledger_projection_lag_events";
pub const POSTING_LAG: &str = "ledger_posting_lag_events";
pub const RELAY_LAG: &str = "ledger_relay_lag_events";
pub const RELAY_PUBLISHED: &str = "ledger_relay_events_published_total";
pub const DB_POOL_CONNECTIONS: &str = "ledger_db_pool_connections";
pub const METRICS_REFRESHES: &str = "ledger_metrics_database_refreshes_total";
pub const SHED: &str = "ledger_requests_shed_total";
pub const READS: &str = "ledger_reads_total";
pub const REPLICA_UP: &str = "ledger_read_replica_up";
pub const REPLICA_LAG_BYTES: &str = "ledger_read_replica_lag_bytes";
pub const REPLICA_FALLBACKS: &str = "ledger_read_replica_fallbacks_total";
pub const BUILD_INFO: &str = "ledger_build_info";

/// Latency buckets from 0.5 ms to 10 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
const BATCH_HISTOGRAM_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The process's Prometheus handle, installing the recorder on first call.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.to_owned()), LATENCY_BUCKETS_SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(GRPC_REQUEST_DURATION.to_owned()), LATENCY_BUCKETS_SECONDS)
            })
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_COMMANDS.to_owned()), BATCH_HISTOGRAM_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_DURATION.to_owned()), LATENCY_BUCKETS_SECONDS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_STREAMS.to_owned()), BATCH_HISTOGRAM_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(BATCH_APPEND_DURATION.to_owned()), LATENCY_BUCKETS_SECONDS)
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a host application);
        // then our metrics go there and this handle renders only ours.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route template and status");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency by method, route and status"
    );
    describe_counter!(GRPC_REQUESTS, "gRPC calls by method and status code");
    describe_histogram!(
        GRPC_REQUEST_DURATION,
        Unit::Seconds,
        "gRPC call latency (a stream: until it opens) by method and status code"
    );
    describe_counter!(COMMANDS, "Commands by command and outcome (accepted, or the refusal)");
    describe_counter!(EVENTS_APPENDED, "Events appended to the log, by type");
    describe_histogram!(BATCH_COMMANDS, "Commands per group-commit batch (one append each)");
    describe_histogram!(BATCH_STREAMS, "Accounts appended to by one group-commit batch");
    describe_histogram!(
        BATCH_APPEND_DURATION,
        Unit::Seconds,
        "Time from sending a group-commit batch's append statement to its commit (round trip, execution, fsync)"
    );
    describe_histogram!(
        BATCH_DURATION,
        Unit::Seconds,
        "Time to decide and append one group-commit batch"
    );
    describe_counter!(READS, "Queries by the server that answered them (primary or replica)");
    describe_gauge!(
        REPLICA_UP,
        "1 when a read replica is in rotation, 0 when it is out (down, not a standby, lagging)"
    );
    describe_gauge!(
        REPLICA_LAG_BYTES,
        "WAL bytes a read replica had still to replay at its last health check"
    );
    describe_counter!(
        REPLICA_FALLBACKS,
        "Queries meant for a read replica that the primary answered: behind (min_position not reached in time) or error"
    );
    describe_gauge!(PROJECTION_POSITION, "Last log position reflected in each projection");
    describe_gauge!(PROJECTION_LAG, "Committed events a projection has not applied yet");
    describe_counter!(
        SHED,
        "Requests and commands refused at a bound (in_flight, queue, subscriptions) with a 503, nothing done"
    );
    describe_counter!(
        METRICS_REFRESHES,
        "Times /metrics read the projection and posting lags from the database (at most once a second)"
    );
    describe_gauge!(
        POSTING_LAG,
        "Committed events the posting process (on-us credits) has not passed yet"
    );
    describe_gauge!(
        RELAY_LAG,
        "Committed events the NATS JetStream relay has not published yet (absent when no relay ever ran)"
    );
    describe_counter!(
        RELAY_PUBLISHED,
        "Events this process's relay published to JetStream (duplicates JetStream dropped not counted)"
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections by state (in_use, idle, max)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label says which build runs");
}

/// Drains the histograms' pending samples every few seconds, for as long as
/// the server runs. The recorder buffers every observation until the next
/// render or upkeep: without a scrape (and nobody has to scrape), each
/// request's few samples stayed in memory for good, ~65 bytes per request,
/// which the soak showed as a steady RSS growth.
pub async fn upkeep_periodically() {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        prometheus().run_upkeep();
    }
}

/// A request or command refused at a bound (`in_flight`, `queue`,
/// `subscriptions`) before anything was done.
pub fn record_shed(bound: &'static str) {
    metrics::counter!(SHED, "bound" => bound).increment(1);
}

pub fn record_http(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
}

pub fn record_grpc(method: &str, code: tonic::Code, elapsed: Duration) {
    let labels = [("method", method.to_owned()), ("code", format!("{code:?}"))];
    metrics::counter!(GRPC_REQUESTS, &labels).increment(1);
    metrics::histogram!(GRPC_REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
}
