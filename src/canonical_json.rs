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
                string(out, key);
                out.push(b':');
                canonical_json(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => array(out, items, |out, item| canonical_json(item, out)),
        scalar => serde_json::to_writer(&mut *out, scalar).expect("write to Vec"),
    }
}

/// `value`'s canonical form as text (what an append hashes and stores).
pub fn to_text(value: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    canonical_json(value, &mut out);
    String::from_utf8(out).expect("JSON is written as UTF-8")
}

/// SHA-256 of `value`'s canonical form.
pub fn digest(value: &Value) -> [u8; 32] {
    let mut buffer = Vec::with_capacity(256);
    canonical_json(value, &mut buffer);
    Sha256::digest(&buffer).into()
}

/// Writes one canonical JSON object straight from typed values, with no
/// [`Value`] built on the way: the same bytes as [`canonical_json`] of the
/// equivalent document, provided members are written in byte order of
/// their keys (checked in debug builds). For the fingerprints of large
/// commands, where building and dropping a `Value` per transfer cost more
/// than the rest of the digest.
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    last_key: Option<&'static str>,
}

impl<'a> ObjectWriter<'a> {
    pub fn begin(out: &'a mut Vec<u8>) -> ObjectWriter<'a> {
        out.push(b'{');
        ObjectWriter { out, last_key: None }
    }

    fn key(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(
            self.last_key.is_none_or(|last| last.as_bytes() < key.as_bytes()),
            "canonical JSON: key {key:?} written after {:?}",
            self.last_key
        );
        if self.last_key.is_some() {
            self.out.push(b',');
        }
        self.last_key = Some(key);
        string(self.out, key);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        let out = self.key(key);
        string(out, value);
    }

    /// `null` when `None`, as `json!` writes an `Option`.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        let out = self.key(key);
        match value {
            Some(value) => string(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub fn int(&mut self, key: &'static str, value: i64) {
        let out = self.key(key);
        // Writing into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &value).expect("write to Vec");
    }

    /// A member whose value the caller writes (canonically) into the buffer.
    pub fn nested(&mut self, key: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        write(self.key(key));
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Writes canonical JSON arrays of items written by `write`.
pub fn array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

fn string(out: &mut Vec<u8>, value: &str) {
    // Writing a string into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).expect("write to Vec");
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
