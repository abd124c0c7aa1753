//! What can be checked of the container set-up without a Docker engine:
//! the compose file's shape, and the real binary started with exactly the
//! environment the compose file gives the service.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use crate::support::*;

fn compose() -> Value {
    let path = format!("{}/docker-compose.yml", env!("CARGO_MANIFEST_DIR"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).expect("docker-compose.yml parses")
}

#[test]
fn the_compose_file_runs_postgres_with_a_healthcheck_and_the_service_after_it() {
    let compose = compose();
    let postgres = &compose["services"]["postgres"];
    assert!(postgres["image"].as_str().unwrap().starts_with("postgres:"));
    assert!(postgres["healthcheck"]["test"].is_array());
    let ledger = &compose["services"]["ledger"];
    assert_eq!(ledger["build"], ".");
    assert_eq!(ledger["depends_on"]["postgres"]["condition"], "service_healthy");
    assert_eq!(ledger["ports"][0], "8080:8080");
    assert_eq!(ledger["ports"][1], "8000:8000");
    let dockerfile = std::fs::read_to_string(format!("{}/Dockerfile", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(
        dockerfile.contains("USER ledger"),
        "the runtime image runs as a non-root user"
    );
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage build");
}

/// `ledger serve` with the compose file's environment for the service —
/// only the database host (a container name) and the port differ — applies
/// its migrations, becomes ready, and logs JSON lines.
#[tokio::test]
async fn the_binary_runs_with_the_compose_environment() {
    let compose = compose();
    let environment = compose["services"]["ledger"]["environment"]
        .as_object()
        .unwrap()
        .clone();
    let db = TestDb::new().await;
    let mut command = ledger_dying_with_the_test();
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in &environment {
        let value = value.as_str().unwrap().to_owned();
        let value = match key.as_str() {
            // `postgres:5432` is a container's name; here, the test server.
            "DATABASE_URL" => db.url(),
            // Port 0: any free port on this machine.
            "LEDGER_LISTEN" => value.replace(":8080", ":0"),
            "LEDGER_GRPC_LISTEN" => value.replace(":8000", ":0"),
            _ => value,
        };
        command.env(key, value);
    }
    assert_eq!(environment["LEDGER_LOG_FORMAT"], "json");
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    let address = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("ledger listening on ").map(str::to_owned))
        .expect("the server printed its address");
    let port = address.rsplit(':').next().unwrap();
    let response = client()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let _ = child.kill();
    let _ = child.wait();
    let logs: Vec<String> = BufReader::new(stderr).lines().map_while(Result::ok).collect();
    assert!(!logs.is_empty());
    for line in &logs {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("a JSON log line: {line}"));
        assert!(parsed["level"].is_string() && parsed["timestamp"].is_string(), "{line}");
    }
}
