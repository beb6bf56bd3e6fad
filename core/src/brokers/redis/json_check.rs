//! Whether bytes are exactly one JSON value (RFC 8259) with nothing around it: what an envelope
//! may embed byte for byte. A single pass that builds nothing, several times faster than a
//! parse to `RawValue`, and never more accepting than `serde_json` (tested against it below),
//! so what is embedded always reads back.

/// Deepest nesting embedded. Deeper values (serde_json stops at 128) travel base64-encoded.
const MAX_DEPTH: u32 = 100;

/// True when `bytes` is one JSON value, with no whitespace before or after it.
pub(super) fn is_single_value(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok() && Checker { bytes, at: 0 }.run()
}

struct Checker<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Reads `expected` at the current position.
    fn eat(&mut self, expected: u8) -> bool {
        let found = self.peek() == Some(expected);
        self.at += usize::from(found);
        found
    }

    /// The value, then nothing. Containers are tracked on a bit stack (1 = object).
    fn run(mut self) -> bool {
        let mut objects: u128 = 0;
        let mut depth = 0u32;
        'value: loop {
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    // An empty container counts as a level too, as in serde_json.
                    if depth + 1 > MAX_DEPTH {
                        return false;
                    }
                    self.at += 1;
                    self.skip_whitespace();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if !self.eat(close) {
                        depth += 1;
                        objects = (objects << 1) | u128::from(open == b'{');
                        if open == b'{' && !self.key() {
                            return false;
                        }
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    if !self.string() {
                        return false;
                    }
                }
                Some(b't') => {
                    if !self.literal(b"true") {
                        return false;
                    }
                }
                Some(b'f') => {
                    if !self.literal(b"false") {
                        return false;
                    }
                }
                Some(b'n') => {
                    if !self.literal(b"null") {
                        return false;
                    }
                }
                Some(b'-' | b'0'..=b'9') => {
                    if !self.number() {
                        return false;
                    }
                }
                _ => return false,
            }
            // After a value: the next member or element, or the end of containers.
            loop {
                if depth == 0 {
                    return self.at == self.bytes.len();
                }
                self.skip_whitespace();
                let in_object = objects & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        self.skip_whitespace();
                        if in_object && !self.key() {
                            return false;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ => return false,
                }
                self.at += 1;
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// A member's name and its colon, leaving the position at the value.
    fn key(&mut self) -> bool {
        if self.peek() != Some(b'"') || !self.string() {
            return false;
        }
        self.skip_whitespace();
        if !self.eat(b':') {
            return false;
        }
        self.skip_whitespace();
        true
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(word);
        self.at += if found { word.len() } else { 0 };
        found
    }

    /// Skips eight bytes at a time while none of them is a quote, a backslash or a control
    /// character (the bytes a string's scan has to look at).
    fn skip_plain_words(&mut self) {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
        let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
        while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
            let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
            if control
                || has_zero(word ^ (ONES * u64::from(b'"')))
                || has_zero(word ^ (ONES * u64::from(b'\\')))
            {
                return;
            }
            self.at += 8;
        }
    }

    /// A string, from its opening quote. The input is valid UTF-8, so only quotes, escapes
    /// and control characters need a look.
    fn string(&mut self) -> bool {
        self.at += 1;
        loop {
            self.skip_plain_words();
            let Some(byte) = self.peek() else {
                return false;
            };
            self.at += 1;
            match byte {
                b'"' => return true,
                b'\\' => match self.peek() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                    Some(b'u') => {
                        let hex = self.bytes.get(self.at + 1..self.at + 5);
                        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return false;
                        }
                        self.at += 5;
                    }
                    _ => return false,
                },
                0x00..=0x1f => return false,
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> bool {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What a parse to `RawValue` accepts, with nothing around the value.
    fn serde_accepts(bytes: &[u8]) -> bool {
        serde_json::from_slice::<&RawValue>(bytes).is_ok_and(|raw| raw.get().len() == bytes.len())
    }

    #[test]
    fn accepts_json_values() {
        for text in [
            "{}",
            "[]",
            "0",
            "-0.5e+10",
            "1E3",
            "true",
            "null",
            r#""a\"b\\c\/\b\f\n\r\t\u00e9""#,
            r#"{"a":[1,{"b":null}],"c":"é"}"#,
            "[ 1 , 2 ,\n\t3 ]",
            r#"{ "a" : 1 }"#,
        ] {
            assert!(is_single_value(text.as_bytes()), "{text}");
            assert!(serde_accepts(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_one_value() {
        for text in [
            "",
            " {}",
            "{} ",
            "{}{}",
            "[1,]",
            "[,1]",
            r#"{"a"}"#,
            r#"{"a":1,}"#,
            "{1:2}",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "tru",
            "nul",
            "\"a",
            "\"\u{1}\"",
            r#""\x""#,
            r#""\u12G4""#,
            "[}",
            "{]",
            "[1 2]",
        ] {
            assert!(!is_single_value(text.as_bytes()), "{text:?}");
        }
        assert!(!is_single_value(b"\"\xff\""));
    }

    #[test]
    fn deep_nesting_is_left_to_base64() {
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(is_single_value(deep(MAX_DEPTH as usize).as_bytes()));
        assert!(!is_single_value(deep(MAX_DEPTH as usize + 1).as_bytes()));
    }

    /// Mutations of valid documents: never accepted where serde_json refuses.
    #[test]
    fn never_accepts_more_than_serde_json() {
        let seeds: [&[u8]; 6] = [
            br#"{"ts":1700000000.123456,"ph":"d","pad":"xx\"x\u00e9"}"#,
            r#"{"long":"abcdefghijklmnopqrstuvwxyz0123456789\n\t\"q\" and more text","k":"é€😀 and then some more"}"#.as_bytes(),
            br#"[1,-2.5e-3,true,false,null,{"a":[{}],"b":"\\"}]"#,
            br#"{"a" : [ 1 , 2 ] , "b" : { "c" : "d" } }"#,
            b"-0",
            br#""\ud800""#,
        ];
        let alphabet = b"{}[]\":,.-+eE0123456789tfnul \t\n\\/abu\x01\xc3\xa9";
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..200_000 {
            let mut doc = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..=doc.len());
                match rng.u8(..3) {
                    0 if at < doc.len() => {
                        doc.remove(at);
                    }
                    1 if at < doc.len() => doc[at] = alphabet[rng.usize(..alphabet.len())],
                    _ => doc.insert(at, alphabet[rng.usize(..alphabet.len())]),
                }
            }
            assert_eq!(
                is_single_value(&doc),
                serde_accepts(&doc),
                "{:?}",
                String::from_utf8_lossy(&doc)
            );
        }
    }
}
