//! Canonical JSON for configs, manifests and indexes.
//!
//! Digests are computed over these bytes, so they must not depend on map
//! iteration order or on a serde_json feature some dependency turns on: keys
//! are sorted by their bytes, no whitespace is written.

use serde::Serialize;
use serde_json::Value;

/// Serialises `value` as canonical JSON: object keys sorted, no whitespace.
pub fn canonical<T: Serialize>(value: &T) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("kiln's own types always serialise to JSON");
    let mut out = Vec::new();
    write_value(&value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_value(val, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("writing JSON to memory cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sorts_keys_at_every_depth() {
        let mut inner = HashMap::new();
        for k in ["zeta", "alpha", "mid"] {
            inner.insert(k.to_string(), 1);
        }
        let mut outer = HashMap::new();
        outer.insert("b", inner.clone());
        outer.insert("a", inner);
        let text = String::from_utf8(canonical(&outer)).unwrap();
        assert_eq!(
            text,
            r#"{"a":{"alpha":1,"mid":1,"zeta":1},"b":{"alpha":1,"mid":1,"zeta":1}}"#
        );
    }
}
