//! Integration tests against a real PostgreSQL, compiled as one binary so
//! they share one throw-away cluster; each test gets its own database.

mod audit;
mod auth;
mod binary;
mod chaos;
mod concurrency;
mod containers;
mod docs;
mod double_entry;
mod double_entry_property;
mod event_store;
mod fuzz;
mod grpc;
mod hygiene;
mod idempotency;
mod iso20022;
mod limits;
mod money;
mod outcomes;
mod queries;
mod rebuild_property;
mod relay;
mod replicas;
mod resilience;
mod seed;
mod support;
mod validation;
