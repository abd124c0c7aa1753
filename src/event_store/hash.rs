//! The tamper-evidence chain.
//!
//! Each event's hash is SHA-256 over the previous event's hash in the same
//! stream and this event's content (stream, version, type, schema version,
//! recorded time, payload and metadata). Payload and metadata are hashed in
//! a canonical JSON form (object keys sorted, no whitespace) so the hash can
//! be recomputed from what PostgreSQL's `jsonb` gives back, whatever order
//! it stores keys in. Chains are per stream so unrelated accounts never wait
//! on each other.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The "previous hash" of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// What an event's hash covers. `data` and `metadata` are the canonical
/// JSON of its payload and metadata ([`crate::canonical_json::to_text`]): an append writes each
/// event's canonical text once, hashes it and sends the same text as the
/// stored `jsonb`; a verifier canonicalises what PostgreSQL gives back.
pub struct HashInput<'a> {
    pub stream_id: Uuid,
    pub version: i64,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub recorded_at: DateTime<Utc>,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
}

pub fn event_hash(previous: &[u8; 32], input: &HashInput<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(input.stream_id.as_bytes());
    hasher.update(input.version.to_be_bytes());
    hasher.update(input.event_type.as_bytes());
    hasher.update([0]);
    hasher.update(input.schema_version.to_be_bytes());
    hasher.update(input.recorded_at.timestamp_micros().to_be_bytes());
    hasher.update(input.data);
    hasher.update([0]);
    hasher.update(input.metadata);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical_json::to_text;
    use serde_json::json;

    #[test]
    fn any_change_to_an_event_changes_its_hash() {
        let data = to_text(&json!({"amount_cents": 100}));
        let metadata = to_text(&json!({}));
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let base = HashInput {
            stream_id: Uuid::from_u128(1),
            version: 1,
            event_type: "FundsDeposited",
            schema_version: 1,
            recorded_at: at,
            data: data.as_bytes(),
            metadata: metadata.as_bytes(),
        };
        let h = event_hash(&GENESIS, &base);
        let other_data = to_text(&json!({"amount_cents": 101}));
        assert_ne!(
            h,
            event_hash(
                &GENESIS,
                &HashInput {
                    data: other_data.as_bytes(),
                    ..base
                }
            )
        );
        let base = HashInput {
            data: data.as_bytes(),
            ..base
        };
        assert_ne!(h, event_hash(&[1; 32], &base));
        assert_ne!(h, event_hash(&GENESIS, &HashInput { version: 2, ..base }));
        assert_eq!(h, event_hash(&GENESIS, &base), "deterministic");
    }

    #[test]
    fn the_hash_is_sha256_of_the_previous_hash_the_header_and_the_canonical_documents() {
        // The layout every stored chain was written with: it must never change.
        let data = to_text(&json!({"b": 1, "a": "é"}));
        let metadata = to_text(&json!({"request_id": "r"}));
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let input = HashInput {
            stream_id: Uuid::from_u128(7),
            version: 3,
            event_type: "BulkTransferBooked",
            schema_version: 1,
            recorded_at: at,
            data: data.as_bytes(),
            metadata: metadata.as_bytes(),
        };
        let mut buffer = vec![9u8; 32];
        buffer.extend_from_slice(Uuid::from_u128(7).as_bytes());
        buffer.extend_from_slice(&3i64.to_be_bytes());
        buffer.extend_from_slice(b"BulkTransferBooked\0");
        buffer.extend_from_slice(&1i32.to_be_bytes());
        buffer.extend_from_slice(&1_700_000_000_123_456i64.to_be_bytes());
        buffer.extend_from_slice("{\"a\":\"é\",\"b\":1}".as_bytes());
        buffer.push(0);
        buffer.extend_from_slice(br#"{"request_id":"r"}"#);
        let expected: [u8; 32] = Sha256::digest(&buffer).into();
        assert_eq!(event_hash(&[9; 32], &input), expected);
    }
}
