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

/// The "previous hash" of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Writes `value` as canonical JSON: objects with keys in byte order,
/// no insignificant whitespace. Numbers keep their text (serde_json's
/// `arbitrary_precision`), which for the integers events carry is the same
/// text PostgreSQL prints back.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing a string into a Vec cannot fail.
                serde_json::to_writer(&mut *out, key).expect("write to Vec");
                out.push(b':');
                canonical_json(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("write to Vec"),
    }
}

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
    fn canonical_json_sorts_keys_at_every_level() {
        let mut out = Vec::new();
        canonical_json(
            &json!({"b": 1, "a": {"d": [1, {"z": null, "y": "é"}], "c": true}}),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":true,"d":[1,{"y":"é","z":null}]},"b":1}"#
        );
    }

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
