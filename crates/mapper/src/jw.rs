//! A small streaming JSON writer: compact JSON straight into a `String`, with no tree.
//!
//! It writes exactly what `serde_json` writes for the same values (compact form, the same
//! string escapes, its own `f64` formatting, `null` for non-finite numbers), so that a resource written
//! with it is byte-identical to the serialization of the equivalent `serde_json::Value`. The
//! caller is responsible for the structure (keys in order, objects closed); the writer only
//! places commas.

/// A compact JSON writer. Commas between members and elements are placed automatically.
#[derive(Debug, Default)]
pub struct JsonWriter {
    buf: String,
    /// Whether the next member or element needs a comma before it.
    comma: bool,
}

impl JsonWriter {
    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: String::with_capacity(capacity),
            comma: false,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The text.
    pub fn finish(self) -> String {
        self.buf
    }

    #[inline]
    fn sep(&mut self) {
        if self.comma {
            self.buf.push(',');
        }
    }

    /// Open an object (as a value or an array element).
    #[inline]
    pub fn open(&mut self) {
        self.sep();
        self.buf.push('{');
        self.comma = false;
    }

    /// Close the current object.
    #[inline]
    pub fn close(&mut self) {
        self.buf.push('}');
        self.comma = true;
    }

    /// Open an array (as a value or an array element).
    #[inline]
    pub fn open_array(&mut self) {
        self.sep();
        self.buf.push('[');
        self.comma = false;
    }

    /// Close the current array.
    #[inline]
    pub fn close_array(&mut self) {
        self.buf.push(']');
        self.comma = true;
    }

    /// Write a member's key; its value comes next. Keys are literals that need no escaping.
    #[inline]
    pub fn key(&mut self, k: &str) {
        self.sep();
        self.buf.push('"');
        self.buf.push_str(k);
        self.buf.push_str("\":");
        self.comma = false;
    }

    /// Write a string value.
    #[inline]
    pub fn str(&mut self, s: &str) {
        self.sep();
        escape_into(&mut self.buf, s);
        self.comma = true;
    }

    /// Write a string value given in pieces (concatenated, escaped as one string).
    pub fn str_parts(&mut self, parts: &[&str]) {
        self.sep();
        self.buf.push('"');
        for p in parts {
            escape_body(&mut self.buf, p);
        }
        self.buf.push('"');
        self.comma = true;
    }

    /// Write an unsigned integer value.
    #[inline]
    pub fn uint(&mut self, v: u64) {
        self.sep();
        self.buf.push_str(itoa::Buffer::new().format(v));
        self.comma = true;
    }

    /// Write a signed integer value.
    #[inline]
    pub fn int(&mut self, v: i64) {
        self.sep();
        self.buf.push_str(itoa::Buffer::new().format(v));
        self.comma = true;
    }

    /// Write an `f64` the way `serde_json` does (its own formatter: shortest round-trip form,
    /// `null` when not finite).
    #[inline]
    pub fn f64(&mut self, v: f64) {
        use serde_json::ser::Formatter as _;
        self.sep();
        if v.is_finite() {
            let mut tmp = [0u8; 40];
            let mut out: &mut [u8] = &mut tmp;
            let room = out.len();
            if serde_json::ser::CompactFormatter
                .write_f64(&mut out, v)
                .is_ok()
            {
                let n = room - out.len();
                if let Ok(s) = std::str::from_utf8(&tmp[..n]) {
                    self.buf.push_str(s);
                }
            }
        } else {
            self.buf.push_str("null");
        }
        self.comma = true;
    }

    /// Write the number a decimal text parses to, exactly as [`JsonWriter::f64`] writes it,
    /// without going through `f64`, when the text is plain: an optional `-`, at most 11 digits,
    /// then optionally a point and at most 4 digits (amounts as extracts carry them). Such a
    /// number has at most 15 significant digits, so the shortest form that reads back as its
    /// `f64` is its own digits, and `serde_json` writes it without an exponent: leading zeros
    /// dropped, trailing fraction zeros dropped, `.0` when whole. Returns `false`, writing
    /// nothing, for any other text (the caller parses it).
    pub fn plain_decimal(&mut self, text: &str) -> bool {
        let b = text.as_bytes();
        let negative = b.first() == Some(&b'-');
        let digits = usize::from(negative);
        let (int, frac) = match b[digits..].iter().position(|&c| c == b'.') {
            Some(i) => (digits..digits + i, digits + i + 1..b.len()),
            None => (digits..b.len(), b.len()..b.len()),
        };
        if int.is_empty()
            || int.len() > 11
            || frac.len() > 4
            || !b[int.clone()]
                .iter()
                .chain(&b[frac.clone()])
                .all(u8::is_ascii_digit)
        {
            return false;
        }
        // Slices of the text at ASCII positions: no UTF-8 check to make.
        let int = &text[int];
        let int = &int[int.bytes().position(|c| c != b'0').unwrap_or(int.len())..];
        let frac = &text[frac];
        let frac = &frac[..frac.bytes().rposition(|c| c != b'0').map_or(0, |i| i + 1)];
        self.sep();
        if negative {
            self.buf.push('-');
        }
        self.buf.push_str(if int.is_empty() { "0" } else { int });
        self.buf.push('.');
        self.buf.push_str(if frac.is_empty() { "0" } else { frac });
        self.comma = true;
        true
    }

    /// Write a boolean value.
    #[inline]
    pub fn bool(&mut self, v: bool) {
        self.sep();
        self.buf.push_str(if v { "true" } else { "false" });
        self.comma = true;
    }

    /// `"key":"value"`.
    #[inline]
    pub fn kv(&mut self, k: &str, v: &str) {
        self.key(k);
        self.str(v);
    }

    /// `{key:[{a.0:a.1,b.0:b.1}]}` as one value: an object holding a list of one two-member
    /// object (a `coding`, an `extension`). Keys are literals that need no escaping; the
    /// values are escaped. The same text as opening and closing each level, in a third of the
    /// writes: a claim has dozens of these.
    pub fn wrapped_pair(&mut self, key: &str, a: (&str, &str), b: (&str, &str)) {
        self.sep();
        let buf = &mut self.buf;
        buf.push_str("{\"");
        buf.push_str(key);
        buf.push_str("\":[{\"");
        buf.push_str(a.0);
        buf.push_str("\":");
        escape_into(buf, a.1);
        buf.push_str(",\"");
        buf.push_str(b.0);
        buf.push_str("\":");
        escape_into(buf, b.1);
        buf.push_str("}]}");
        self.comma = true;
    }

    /// Write JSON rendered ahead of time as one value: a constant fragment (a coding of a fixed
    /// system and code), written exactly as the writer's own calls would write it.
    #[inline]
    pub fn raw(&mut self, json: &str) {
        self.sep();
        self.buf.push_str(json);
        self.comma = true;
    }

    /// Open an object with its first key already rendered (`{"value":`): the member's value
    /// comes next. Pairs with [`JsonWriter::close_with`].
    #[inline]
    pub fn open_with(&mut self, head: &str) {
        self.sep();
        self.buf.push_str(head);
        self.comma = false;
    }

    /// Close an object with its last members already rendered (`,"currency":"USD"}`).
    #[inline]
    pub fn close_with(&mut self, tail: &str) {
        self.buf.push_str(tail);
        self.comma = true;
    }

    /// An array of strings.
    pub fn str_array<S: AsRef<str>>(&mut self, items: &[S]) {
        self.open_array();
        for s in items {
            self.str(s.as_ref());
        }
        self.close_array();
    }
}

/// Append `s` as a JSON string literal, escaped exactly as `serde_json` escapes it.
pub fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    escape_body(out, s);
    out.push('"');
}

/// Whether a string has a byte JSON must escape (a control character, `"` or `\\`). No early
/// exit, so that the loop vectorizes: most strings have nothing to escape.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

fn escape_body(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.push_str(s);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_fragments_are_the_writes() {
        let mut a = JsonWriter::default();
        let mut b = JsonWriter::default();
        for w in [&mut a, &mut b] {
            w.open_array();
            w.int(1);
        }
        a.raw(r#"{"k":"v"}"#);
        b.open();
        b.kv("k", "v");
        b.close();
        a.open_with(r#"{"value":"#);
        a.int(2);
        a.close_with(r#","currency":"USD"}"#);
        b.open();
        b.key("value");
        b.int(2);
        b.kv("currency", "USD");
        b.close();
        for w in [&mut a, &mut b] {
            w.int(3);
            w.close_array();
        }
        assert_eq!(a.as_str(), b.as_str());
        assert_eq!(
            a.as_str(),
            r#"[1,{"k":"v"},{"value":2,"currency":"USD"},3]"#
        );
    }

    #[test]
    fn wrapped_pair_is_the_nested_writes() {
        for (key, a, b) in [
            ("coding", ("system", "http://x/y"), ("code", "c")),
            (
                "extension",
                ("url", "u\"q"),
                ("valueCode", "tab\there\u{1}"),
            ),
            ("k", ("a", ""), ("b", "é")),
        ] {
            let mut fast = JsonWriter::default();
            let mut slow = JsonWriter::default();
            for w in [&mut fast, &mut slow] {
                w.open_array();
                w.str("before");
            }
            fast.wrapped_pair(key, a, b);
            slow.open();
            slow.key(key);
            slow.open_array();
            slow.open();
            slow.kv(a.0, a.1);
            slow.kv(b.0, b.1);
            slow.close();
            slow.close_array();
            slow.close();
            for w in [&mut fast, &mut slow] {
                w.str("after");
                w.close_array();
            }
            assert_eq!(fast.as_str(), slow.as_str());
            let v: serde_json::Value = serde_json::from_str(fast.as_str()).expect("JSON");
            assert_eq!(v[1][key][0][b.0], b.1);
        }
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let samples = [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "ctl \u{0} \u{1} \u{8} \u{c} \n \r \t \u{1f} \u{7f}",
            "accents é ü 漢字 🙂",
        ];
        for s in samples {
            let mut out = String::new();
            escape_into(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_format_like_serde_json() {
        for v in [
            0.0,
            -0.0,
            1.0,
            12.5,
            0.1 + 0.2,
            1e15,
            1e16,
            1e20,
            1e300,
            5e-324,
            f64::MAX,
            123_456_789.123,
            1e-7,
            f64::NAN,
            f64::INFINITY,
            -12.34,
        ] {
            let mut w = JsonWriter::default();
            w.f64(v);
            assert_eq!(w.finish(), serde_json::json!(v).to_string(), "{v}");
        }
        let mut w = JsonWriter::default();
        w.open_array();
        w.int(-5);
        w.uint(7);
        w.bool(true);
        w.open();
        w.kv("a", "b");
        w.key("c");
        w.open_array();
        w.close_array();
        w.close();
        w.str_parts(&["x/", "y"]);
        w.close_array();
        assert_eq!(w.finish(), r#"[-5,7,true,{"a":"b","c":[]},"x/y"]"#);
    }

    /// Plain decimal text is written as its parsed `f64` would be; other text is refused.
    #[test]
    fn plain_decimals_format_like_their_f64() {
        let mut plain = vec![
            "0",
            "-0",
            "0.00",
            "-0.00",
            "007.10",
            "5.",
            "100",
            "100.00",
            "12.25",
            "0.0001",
            "0.5000",
            "99999999999.9999",
            "12345678901",
            "1.1",
            "0.1",
            "0.3",
            "368.75",
            "-73.75",
            "00000000000.0001",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let int = seed % 10u64.pow(1 + (seed >> 60) as u32 % 11);
            let places = (seed >> 40) as usize % 5;
            let frac = (seed >> 20) % 10u64.pow(places as u32);
            let sign = if seed & 1 == 1 { "-" } else { "" };
            plain.push(match places {
                0 => format!("{sign}{int}"),
                p => format!("{sign}{int}.{frac:0p$}"),
            });
        }
        for text in &plain {
            let mut fast = JsonWriter::default();
            assert!(fast.plain_decimal(text), "{text}");
            let mut slow = JsonWriter::default();
            slow.f64(text.parse().unwrap());
            assert_eq!(fast.finish(), slow.finish(), "{text}");
        }
        for text in [
            "",
            "-",
            ".5",
            "+5",
            "1e5",
            "1.23456",
            "123456789012",
            "1,5",
            "12.5.1",
            " 1",
            "NaN",
            "--1",
            "1.-5",
        ] {
            let mut w = JsonWriter::default();
            assert!(!w.plain_decimal(text), "{text}");
            assert!(w.is_empty(), "{text}");
        }
    }
}
