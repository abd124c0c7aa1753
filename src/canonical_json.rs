//! Canonical JSON: one spelling of a JSON document (object keys in byte
//! order, no insignificant whitespace), so that a digest of it depends on
//! the document's content only. Shared by the event hash chain and the
//! idempotency fingerprints of commands.

use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// SHA-256 of `value`'s canonical form.
pub fn digest(value: &Value) -> [u8; 32] {
    let mut buffer = Vec::with_capacity(256);
    canonical_json(value, &mut buffer);
    Sha256::digest(&buffer).into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
    fn the_digest_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": [1, 2], "a": "x"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"x","b":[1,2]}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"a": "y", "b": [1, 2]})));
    }
}
