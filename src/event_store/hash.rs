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
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::canonical_json::canonical_json;

/// The "previous hash" of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// What an event's hash covers.
pub struct HashInput<'a> {
    pub stream_id: Uuid,
    pub version: i64,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub recorded_at: DateTime<Utc>,
    pub data: &'a Value,
    pub metadata: &'a Value,
}

pub fn event_hash(previous: &[u8; 32], input: &HashInput<'_>) -> [u8; 32] {
    let mut buffer = Vec::with_capacity(256);
    buffer.extend_from_slice(previous);
    buffer.extend_from_slice(input.stream_id.as_bytes());
    buffer.extend_from_slice(&input.version.to_be_bytes());
    buffer.extend_from_slice(input.event_type.as_bytes());
    buffer.push(0);
    buffer.extend_from_slice(&input.schema_version.to_be_bytes());
    buffer.extend_from_slice(&input.recorded_at.timestamp_micros().to_be_bytes());
    canonical_json(input.data, &mut buffer);
    buffer.push(0);
    canonical_json(input.metadata, &mut buffer);
    Sha256::digest(&buffer).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn any_change_to_an_event_changes_its_hash() {
        let data = json!({"amount_cents": 100});
        let metadata = json!({});
        let at = DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap();
        let base = HashInput {
            stream_id: Uuid::from_u128(1),
            version: 1,
            event_type: "FundsDeposited",
            schema_version: 1,
            recorded_at: at,
            data: &data,
            metadata: &metadata,
        };
        let h = event_hash(&GENESIS, &base);
        let other_data = json!({"amount_cents": 101});
        assert_ne!(
            h,
            event_hash(
                &GENESIS,
                &HashInput {
                    data: &other_data,
                    ..base
                }
            )
        );
        let base = HashInput { data: &data, ..base };
        assert_ne!(h, event_hash(&[1; 32], &base));
        assert_ne!(h, event_hash(&GENESIS, &HashInput { version: 2, ..base }));
        assert_eq!(h, event_hash(&GENESIS, &base), "deterministic");
    }
}
