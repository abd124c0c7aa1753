//! Micro-benchmarks of the domain's hot path (criterion):
//! `cargo bench --bench domain`.
//!
//! What a bulk transfer costs before it reaches PostgreSQL: parsing
//! amounts and IBANs, deciding and applying a 1,000-transfer bulk, and
//! hashing the resulting event for the tamper-evidence chain.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ledger::canonical_json::to_text;
use ledger::domain::{
    Account, Bic, Command, Currency, Event, Iban, IbanCheck, TransferBulkCommand, TransferLine, apply, decide,
    parse_amount,
};
use ledger::event_store::hash::{GENESIS, HashInput, event_hash};
use uuid::Uuid;

fn account() -> Account {
    Account {
        account_id: Uuid::from_u128(1),
        organization_name: "ACME Corp".into(),
        iban: Iban::parse("DE89370400440532013000", IbanCheck::Full).unwrap(),
        bic: Bic::parse("COBADEFFXXX").unwrap(),
        currency: Currency::EUR,
        balance_cents: 1_000_000_000_000,
        version: 2,
    }
}

fn bulk(transfers: usize) -> Command {
    Command::TransferBulk(TransferBulkCommand {
        bulk_id: Uuid::now_v7(),
        organization_name: "ACME Corp".into(),
        organization_bic: Some(Bic::parse("COBADEFFXXX").unwrap()),
        transfers: (0..transfers)
            .map(|i| TransferLine {
                transfer_id: Uuid::now_v7(),
                amount_cents: 1_000 + i as i64,
                currency: Currency::EUR,
                counterparty_name: "Bip Bip".into(),
                counterparty_iban: Iban::parse("GB82WEST12345698765432", IbanCheck::Full).unwrap(),
                counterparty_bic: Some(Bic::parse("NWBKGB2L").unwrap()),
                description: "Salary 2026-11".into(),
                end_to_end_id: None,
            })
            .collect(),
    })
}

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("amount \"61238.50\"", |b| {
        b.iter(|| parse_amount(black_box("61238.50"), Currency::EUR))
    });
    group.bench_function("iban full check", |b| {
        b.iter(|| Iban::parse(black_box("DE89 3704 0044 0532 0130 00"), IbanCheck::Full))
    });
    group.bench_function("iban structure check", |b| {
        b.iter(|| Iban::parse(black_box("DE89 3704 0044 0532 0130 00"), IbanCheck::Structure))
    });
    group.bench_function("bic", |b| b.iter(|| Bic::parse(black_box("COBADEFFXXX"))));
    group.finish();
}

fn deciding(c: &mut Criterion) {
    let state = account();
    let command = bulk(1_000);
    let events = decide(Some(&state), &command).unwrap();
    let mut group = c.benchmark_group("bulk of 1000 transfers");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("decide", |b| {
        b.iter(|| decide(Some(black_box(&state)), black_box(&command)))
    });
    group.bench_function("apply", |b| {
        b.iter(|| apply(Some(state.clone()), black_box(&events[0])))
    });
    group.bench_function("serialise event payload", |b| b.iter(|| black_box(&events[0]).data()));
    let data = events[0].data();
    let metadata = serde_json::json!({"request_id": "bench", "idempotency_key": null, "command": "TransferBulk"});
    group.bench_function("hash (canonical JSON + SHA-256)", |b| {
        b.iter(|| {
            let (data, metadata) = (to_text(black_box(&data)), to_text(&metadata));
            event_hash(
                &GENESIS,
                &HashInput {
                    stream_id: Uuid::from_u128(1),
                    version: 3,
                    event_type: "BulkTransferBooked",
                    schema_version: Event::SCHEMA_VERSION,
                    recorded_at: chrono::DateTime::from_timestamp_micros(1_800_000_000_000_000).unwrap(),
                    data: data.as_bytes(),
                    metadata: metadata.as_bytes(),
                },
            )
        })
    });
    group.finish();
}

criterion_group!(benches, parsing, deciding);
criterion_main!(benches);
