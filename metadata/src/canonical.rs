//! Canonical JSON in the OLPC / securesystemslib form, the form TUF signatures cover.
//!
//! Objects have their keys sorted by code point, there is no whitespace, strings escape only
//! `\` and `"` (every other character, control characters and non-ASCII included, is written
//! as-is in UTF-8), and only integers are allowed: a float is an error. This is *not* RFC 8785.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCanonical(pub String);

/// Encodes `value` in canonical form.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, NotCanonical> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), NotCanonical> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(NotCanonical(format!("non-integer number {n}")));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_strips_whitespace() {
        let v = json!({"b": [1, 2, {"d": null, "c": true}], "a": "x"});
        assert_eq!(
            to_canonical(&v).unwrap(),
            br#"{"a":"x","b":[1,2,{"c":true,"d":null}]}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        let v = json!("a\"b\\c\nd\u{e9}");
        assert_eq!(
            to_canonical(&v).unwrap(),
            "\"a\\\"b\\\\c\nd\u{e9}\"".as_bytes()
        );
    }

    #[test]
    fn sorts_by_code_point() {
        let v = json!({"\u{e9}": 1, "z": 2, "A": 3});
        assert_eq!(
            to_canonical(&v).unwrap(),
            "{\"A\":3,\"z\":2,\"\u{e9}\":1}".as_bytes()
        );
    }

    #[test]
    fn floats_have_no_canonical_form() {
        assert!(to_canonical(&json!({"a": 1.5})).is_err());
        assert_eq!(to_canonical(&json!(-7)).unwrap(), b"-7");
        assert_eq!(
            to_canonical(&json!(u64::MAX)).unwrap(),
            u64::MAX.to_string().as_bytes()
        );
    }
}
