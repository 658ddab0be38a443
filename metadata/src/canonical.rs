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

/// Encodes JSON text in canonical form without building a value tree: one pass over the
/// bytes, sorting object members only where they are not already in order. Rejects what
/// has no canonical form (non-integer numbers) and, unlike most JSON parsers, objects with a
/// duplicate key (two parsers could otherwise disagree on which value was signed).
pub fn canonicalize(json: &[u8]) -> Result<Vec<u8>, NotCanonical> {
    let text = std::str::from_utf8(json).map_err(|e| NotCanonical(format!("not UTF-8: {e}")))?;
    let mut p = Stream {
        s: text.as_bytes(),
        i: 0,
        out: Vec::with_capacity(json.len()),
        depth: 0,
    };
    p.ws();
    p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(p.out)
}

/// Nesting deeper than this is refused (no metadata comes close; it bounds the recursion).
const MAX_DEPTH: usize = 128;

struct Stream<'a> {
    s: &'a [u8],
    i: usize,
    out: Vec<u8>,
    depth: usize,
}

impl<'a> Stream<'a> {
    fn err(&self, what: &str) -> NotCanonical {
        NotCanonical(format!("{what} at byte {}", self.i))
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), NotCanonical> {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected {:?}", c as char)))
        }
    }

    fn value(&mut self) -> Result<(), NotCanonical> {
        match self.s.get(self.i) {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => {
                let s = self.string()?;
                push_str(&s, &mut self.out);
                Ok(())
            }
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), NotCanonical> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            self.out.extend_from_slice(word.as_bytes());
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn number(&mut self) -> Result<(), NotCanonical> {
        let start = self.i;
        let negative = self.s[self.i] == b'-';
        if negative {
            self.i += 1;
        }
        let digits = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let n = &self.s[digits..self.i];
        if n.is_empty() || (n.len() > 1 && n[0] == b'0') {
            return Err(self.err("invalid number"));
        }
        if matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E')) {
            return Err(NotCanonical(format!("non-integer number at byte {start}")));
        }
        // Python's int("-0") is 0.
        if negative && n != b"0" {
            self.out.push(b'-');
        }
        self.out.extend_from_slice(n);
        Ok(())
    }

    /// Parses a string and returns its decoded content.
    fn string(&mut self) -> Result<std::borrow::Cow<'a, str>, NotCanonical> {
        self.eat(b'"')?;
        let start = self.i;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'"' => {
                    let raw = &self.s[start..self.i];
                    self.i += 1;
                    // The input was checked as UTF-8 and a '"' never splits a character.
                    let raw = std::str::from_utf8(raw).map_err(|_| self.err("invalid UTF-8"))?;
                    return Ok(std::borrow::Cow::Borrowed(raw));
                }
                b'\\' => return self.escaped_string(start).map(std::borrow::Cow::Owned),
                c if c < 0x20 => return Err(self.err("control character in string")),
                _ => self.i += 1,
            }
        }
        Err(self.err("unterminated string"))
    }

    fn escaped_string(&mut self, start: usize) -> Result<String, NotCanonical> {
        let mut buf: Vec<u8> = self.s[start..self.i].to_vec();
        while self.i < self.s.len() {
            let c = self.s[self.i];
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(buf).map_err(|_| self.err("invalid UTF-8")),
                b'\\' => {
                    let e = *self
                        .s
                        .get(self.i)
                        .ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => buf.push(e),
                        b'b' => buf.push(8),
                        b'f' => buf.push(12),
                        b'n' => buf.push(b'\n'),
                        b'r' => buf.push(b'\r'),
                        b't' => buf.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            let ch =
                                char::from_u32(cp).ok_or_else(|| self.err("invalid \\u escape"))?;
                            let mut tmp = [0u8; 4];
                            buf.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                c if c < 0x20 => return Err(self.err("control character in string")),
                c => buf.push(c),
            }
        }
        Err(self.err("unterminated string"))
    }

    fn hex4(&mut self) -> Result<u32, NotCanonical> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| self.err("invalid \\u escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("invalid \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    fn enter(&mut self) -> Result<(), NotCanonical> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        Ok(())
    }

    fn array(&mut self) -> Result<(), NotCanonical> {
        self.enter()?;
        self.eat(b'[')?;
        self.out.push(b'[');
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                self.value()?;
                self.ws();
                match self.s.get(self.i) {
                    Some(b',') => {
                        self.i += 1;
                        self.out.push(b',');
                    }
                    Some(b']') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.err("expected ',' or ']'")),
                }
            }
        }
        self.out.push(b']');
        self.depth -= 1;
        Ok(())
    }

    fn object(&mut self) -> Result<(), NotCanonical> {
        self.enter()?;
        self.eat(b'{')?;
        let obj_start = self.out.len();
        self.out.push(b'{');
        // Each member is written as `"key":value`; (key, start, end) in `out`.
        let mut members: Vec<(std::borrow::Cow<'a, str>, usize, usize)> = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                let key = self.string()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                if !members.is_empty() {
                    self.out.push(b',');
                }
                let start = self.out.len();
                push_str(&key, &mut self.out);
                self.out.push(b':');
                self.value()?;
                members.push((key, start, self.out.len()));
                self.ws();
                match self.s.get(self.i) {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.err("expected ',' or '}'")),
                }
            }
        }
        let sorted = members.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted {
            let written = self.out.split_off(obj_start + 1);
            let base = obj_start + 1;
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if members.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(self.err("duplicate key in object"));
            }
            for (n, (_, start, end)) in members.iter().enumerate() {
                if n > 0 {
                    self.out.push(b',');
                }
                self.out
                    .extend_from_slice(&written[start - base..end - base]);
            }
        }
        self.out.push(b'}');
        self.depth -= 1;
        Ok(())
    }
}

fn push_str(s: &str, out: &mut Vec<u8>) {
    write_str(s, out);
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn both(text: &str) -> (Result<Vec<u8>, NotCanonical>, Option<Vec<u8>>) {
        let via_value = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| to_canonical(&v).ok());
        (canonicalize(text.as_bytes()), via_value)
    }

    #[test]
    fn streaming_matches_value_encoding() {
        for text in [
            r#"{"b": [1, -2, {"d": null, "c": true}], "a": "x"}"#,
            r#"{"z": {"y": {"x": []}}, "a": {}, "m": [[], {}, ""]}"#,
            r#"  "a\"b\\c\nd\u00e9\ud83d\ude00/"  "#,
            r#"{"é": 1, "z": 2, "A": 3, "a\u0000": 4}"#,
            r#"[18446744073709551615, -9223372036854775808, 0, false]"#,
        ] {
            let (stream, value) = both(text);
            assert_eq!(stream.unwrap(), value.unwrap(), "{text}");
        }
    }

    #[test]
    fn streaming_rejects_what_has_no_canonical_form() {
        for bad in [
            r#"{"a": 1.5}"#,
            r#"{"a": 1e3}"#,
            r#"{"a": 1, "a": 2}"#,
            r#"{"b": 1, "a": 2, "b": 3}"#,
            r#"{"a": 01}"#,
            "[1,]",
            "{\"a\": \"raw\ncontrol\"}",
            r#"{"a": "\ud800"}"#,
            "[1] x",
            "",
        ] {
            assert!(canonicalize(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(canonicalize(deep.as_bytes()).is_err());
    }

    #[test]
    fn negative_zero_is_zero_as_python_reads_it() {
        assert_eq!(canonicalize(b"[-0, -1]").unwrap(), b"[0,-1]");
    }
}
