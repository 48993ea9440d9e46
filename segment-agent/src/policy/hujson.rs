//! A small HuJSON reader that keeps positions: JSON plus `//` and `/* */`
//! comments and trailing commas (the format of Tailscale's policy file).
//!
//! Every value carries its line and column (1-based, in characters; a tab is
//! one character; `\r\n` and `\n` both end a line), so the Tailscale
//! validator can point at the exact string that is wrong. Errors say where,
//! what and how to fix it. The reader never panics: depth is bounded and
//! every byte sequence ends in a value or an error.

use super::diagnostic::{Diagnostic, Pos};

/// Deeper nesting than this is refused (a policy is a few levels deep).
const MAX_DEPTH: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number as written (`443`, `-1`, `1e3`): callers decide what it may be.
    Number(String),
    String(String),
    Array(Vec<Node>),
    /// Members in file order. A key written twice keeps both entries here;
    /// [`Node::get`] returns the last, as Go's JSON decoder does.
    Object(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Where the value starts; `len` covers it when it is a scalar.
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Node {
    /// The last member named `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Object(m) => m.iter().rev().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of value this is, for messages ("a string", "a list"...).
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        }
    }

    /// The position of the text inside a string literal (after the quote),
    /// for pointing at a part of it.
    pub fn inner(&self) -> Pos {
        match self.value {
            Value::String(_) => Pos {
                line: self.pos.line,
                column: self.pos.column + 1,
                len: self.pos.len.saturating_sub(2).max(1),
            },
            _ => self.pos,
        }
    }
}

/// Parses HuJSON text into a tree with positions.
pub fn parse(text: &str) -> Result<Node, Diagnostic> {
    let mut r = Reader {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
    };
    r.skip_space()?;
    if r.peek().is_none() {
        return Err(Diagnostic::error(Some(r.pos(1)), "the file is empty")
            .help("a tailnet policy file is one object: `{ \"acls\": [ ... ] }`"));
    }
    let v = r.value(0)?;
    r.skip_space()?;
    if let Some(c) = r.peek() {
        return Err(Diagnostic::error(
            Some(r.pos(1)),
            format!("unexpected `{c}` after the end of the policy object"),
        )
        .help(
            "the file must hold exactly one value; check for a stray brace or a missing `[`/`{`",
        ));
    }
    Ok(v)
}

struct Reader {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek2(&self) -> Option<char> {
        self.chars.get(self.i + 1).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn pos(&self, len: u32) -> Pos {
        Pos {
            line: self.line,
            column: self.col,
            len,
        }
    }

    /// Whitespace and comments.
    fn skip_space(&mut self) -> Result<(), Diagnostic> {
        loop {
            match (self.peek(), self.peek2()) {
                (Some(' ' | '\t' | '\n' | '\r' | '\u{feff}'), _) => {
                    self.bump();
                }
                (Some('/'), Some('/')) => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let start = self.pos(2);
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(), self.peek2()) {
                            (Some('*'), Some('/')) => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            (Some(_), _) => {
                                self.bump();
                            }
                            (None, _) => {
                                return Err(Diagnostic::error(
                                    Some(start),
                                    "this `/*` comment is never closed",
                                )
                                .help("end the comment with `*/`"));
                            }
                        }
                    }
                }
                (Some('/'), _) => {
                    return Err(Diagnostic::error(Some(self.pos(1)), "unexpected `/`")
                        .help("comments are written `// ...` or `/* ... */`"));
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, Diagnostic> {
        if depth > MAX_DEPTH {
            return Err(Diagnostic::error(
                Some(self.pos(1)),
                format!("values are nested more than {MAX_DEPTH} levels deep"),
            )
            .help("a policy file is a few levels deep; check for unbalanced brackets"));
        }
        let start = self.pos(1);
        match self.peek() {
            Some('{') => self.object(depth),
            Some('[') => self.array(depth),
            Some('"') => {
                let s = self.string()?;
                Ok(Node {
                    value: Value::String(s),
                    pos: Pos {
                        len: self.len_since(start),
                        ..start
                    },
                })
            }
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let mut word = String::new();
                while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    word.push(c);
                    self.bump();
                }
                let pos = Pos {
                    len: word.chars().count() as u32,
                    ..start
                };
                let value = match word.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" => Value::Null,
                    _ => {
                        return Err(Diagnostic::error(Some(pos), format!("`{word}` is not a value"))
                            .help(format!(
                                "strings are written in double quotes: \"{word}\"; the bare words are true, false and null"
                            )));
                    }
                };
                Ok(Node { value, pos })
            }
            Some('\'') => Err(Diagnostic::error(
                Some(start),
                "strings are written in double quotes, not single quotes",
            )
            .help("replace the ' quotes with \"")),
            Some(c) => Err(Diagnostic::error(Some(start), format!("unexpected `{c}`"))
                .help("expected a value: a string, number, list `[...]`, object `{...}`, true, false or null")),
            None => Err(Diagnostic::error(Some(start), "the file ends where a value was expected")
                .help("the file seems cut short: close every `[` and `{`")),
        }
    }

    fn len_since(&self, start: Pos) -> u32 {
        if self.line == start.line {
            self.col - start.column
        } else {
            1
        }
    }

    fn string(&mut self) -> Result<String, Diagnostic> {
        let start = self.pos(1);
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            let here = self.pos(1);
            match self.bump() {
                None => {
                    return Err(
                        Diagnostic::error(Some(start), "this string is never closed")
                            .help("add the closing `\"`"),
                    );
                }
                Some('"') => return Ok(out),
                Some('\n') => {
                    return Err(Diagnostic::error(
                        Some(start),
                        "this string runs past the end of its line",
                    )
                    .help("close it with `\"` on the same line (write a line break as \\n)"));
                }
                Some('\\') => match self.bump() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('/') => out.push('/'),
                    Some('b') => out.push('\u{8}'),
                    Some('f') => out.push('\u{c}'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => {
                        let hi = self.hex4(here)?;
                        let c = if (0xD800..0xDC00).contains(&hi) {
                            if self.peek() == Some('\\') && self.peek2() == Some('u') {
                                self.bump();
                                self.bump();
                                let lo = self.hex4(here)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(bad_escape(
                                        here,
                                        "a high surrogate must be followed by a low one",
                                    ));
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                None
                            }
                        } else {
                            char::from_u32(hi)
                        };
                        match c {
                            Some(c) => out.push(c),
                            None => {
                                return Err(bad_escape(here, "this \\u escape is not a character"));
                            }
                        }
                    }
                    Some(c) => {
                        return Err(bad_escape(here, &format!("`\\{c}` is not an escape")));
                    }
                    None => {
                        return Err(
                            Diagnostic::error(Some(start), "this string is never closed")
                                .help("add the closing `\"`"),
                        );
                    }
                },
                Some(c) if (c as u32) < 0x20 && c != '\t' => {
                    return Err(Diagnostic::error(
                        Some(here),
                        "a control character inside a string",
                    )
                    .help("write it as an escape (\\n, \\t, \\u0000)"));
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self, at: Pos) -> Result<u32, Diagnostic> {
        let mut v = 0;
        for _ in 0..4 {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    v = v * 16 + d;
                    self.bump();
                }
                None => return Err(bad_escape(at, "\\u needs four hexadecimal digits")),
            }
        }
        Ok(v)
    }

    fn number(&mut self) -> Result<Node, Diagnostic> {
        let start = self.pos(1);
        let mut text = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'))
        {
            text.push(c);
            self.bump();
        }
        let pos = Pos {
            len: text.chars().count() as u32,
            ..start
        };
        if !is_json_number(&text) {
            return Err(
                Diagnostic::error(Some(pos), format!("`{text}` is not a number")).help(format!(
                    "if it is a name or a port list, quote it: \"{text}\""
                )),
            );
        }
        Ok(Node {
            value: Value::Number(text),
            pos,
        })
    }

    fn array(&mut self, depth: usize) -> Result<Node, Diagnostic> {
        let start = self.pos(1);
        self.bump();
        let mut items = Vec::new();
        loop {
            self.skip_space()?;
            match self.peek() {
                Some(']') => {
                    self.bump();
                    return Ok(Node {
                        value: Value::Array(items),
                        pos: start,
                    });
                }
                None => {
                    return Err(Diagnostic::error(Some(start), "this list is never closed")
                        .help("add the closing `]`"));
                }
                _ => {}
            }
            items.push(self.value(depth + 1)?);
            self.skip_space()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {}
                Some(c) => {
                    return Err(Diagnostic::error(
                        Some(self.pos(1)),
                        format!("expected `,` or `]` in this list, found `{c}`"),
                    )
                    .help("separate list items with commas"));
                }
                None => {
                    return Err(Diagnostic::error(Some(start), "this list is never closed")
                        .help("add the closing `]`"));
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Node, Diagnostic> {
        let start = self.pos(1);
        self.bump();
        let mut members: Vec<(Key, Node)> = Vec::new();
        loop {
            self.skip_space()?;
            let kpos = self.pos(1);
            match self.peek() {
                Some('}') => {
                    self.bump();
                    return Ok(Node {
                        value: Value::Object(members),
                        pos: start,
                    });
                }
                Some('"') => {}
                None => {
                    return Err(
                        Diagnostic::error(Some(start), "this object is never closed")
                            .help("add the closing `}`"),
                    );
                }
                Some(c) => {
                    let mut word = String::new();
                    let mut j = self.i;
                    while let Some(&c) = self
                        .chars
                        .get(j)
                        .filter(|c| !matches!(c, ':' | ',' | '}' | '\n' | ' '))
                    {
                        word.push(c);
                        j += 1;
                    }
                    let pos = Pos {
                        len: word.chars().count().max(1) as u32,
                        ..kpos
                    };
                    return Err(if c.is_alphanumeric() || c == '_' {
                        Diagnostic::error(Some(pos), format!("the key `{word}` is not quoted"))
                            .help(format!("write it as \"{word}\""))
                    } else {
                        Diagnostic::error(
                            Some(pos),
                            format!("expected a key in double quotes, found `{c}`"),
                        )
                        .help("object members are written \"key\": value, separated by commas")
                    });
                }
            }
            let name = self.string()?;
            let key = Key {
                name,
                pos: Pos {
                    len: self.len_since(kpos),
                    ..kpos
                },
            };
            self.skip_space()?;
            if self.peek() != Some(':') {
                return Err(Diagnostic::error(
                    Some(self.pos(1)),
                    format!("expected `:` after the key \"{}\"", key.name),
                )
                .help("write \"key\": value"));
            }
            self.bump();
            self.skip_space()?;
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_space()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                Some(c) => {
                    return Err(Diagnostic::error(
                        Some(self.pos(1)),
                        format!("expected `,` or `}}` after this member, found `{c}`"),
                    )
                    .help("separate object members with commas (a missing comma at the end of the previous line is the usual cause)"));
                }
                None => {
                    return Err(
                        Diagnostic::error(Some(start), "this object is never closed")
                            .help("add the closing `}`"),
                    );
                }
            }
        }
    }
}

fn bad_escape(at: Pos, what: &str) -> Diagnostic {
    Diagnostic::error(Some(at), what.to_owned())
        .help("the escapes are \\\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX")
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let s = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// Writes a tree back as (standard) JSON, for tests and `convert`.
pub fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => serde_json::from_str(n).unwrap_or(serde_json::Value::Null),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Object(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                o.insert(k.name.clone(), to_json(v));
            }
            serde_json::Value::Object(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn err(text: &str) -> (u32, u32, String, String) {
        let d = parse(text).expect_err("should be refused");
        let p = d.pos.expect("errors have positions");
        (p.line, p.column, d.message, d.help.unwrap_or_default())
    }

    #[test]
    fn comments_trailing_commas_crlf_and_tabs() {
        let text = "// a policy\r\n{\r\n\t\"acls\": [ /* one */ {\"src\": [\"*\",],},],\r\n\t// end\r\n\t\"x\":\t-1.5e3,\r\n}\r\n";
        let v = parse(text).unwrap();
        let acls = v.get("acls").unwrap();
        assert_eq!((acls.pos.line, acls.pos.column), (3, 10));
        let Value::Array(items) = &acls.value else {
            panic!()
        };
        let src = items[0].get("src").unwrap();
        let Value::Array(s) = &src.value else {
            panic!()
        };
        assert_eq!(s[0].as_str(), Some("*"));
        assert_eq!((s[0].pos.line, s[0].pos.column, s[0].pos.len), (3, 31, 3));
        let x = v.get("x").unwrap();
        assert_eq!(x.value, Value::Number("-1.5e3".into()));
        assert_eq!((x.pos.line, x.pos.column), (5, 7));
    }

    #[test]
    fn escapes() {
        let v = parse(r#"{"a": "q\"b\\s\/\n\t\u00e9\ud83d\ude00"}"#).unwrap();
        assert_eq!(v.get("a").unwrap().as_str(), Some("q\"b\\s/\n\té😀"));
        let v = parse("[\"é\", \"x\"]").unwrap();
        let Value::Array(a) = &v.value else { panic!() };
        assert_eq!(a[1].pos.column, 7, "columns count characters, not bytes");
    }

    #[test]
    fn last_duplicate_key_wins() {
        let v = parse(r#"{"a": 1, "a": 2}"#).unwrap();
        assert_eq!(v.get("a").unwrap().value, Value::Number("2".into()));
    }

    #[test]
    fn errors_point_at_the_problem_and_say_how_to_fix_it() {
        let (l, c, m, h) = err("{\n  \"acls\": [\n    {\"src\": [\"a\"] \"dst\": []}\n  ]\n}");
        assert_eq!((l, c), (3, 19));
        assert!(m.contains("expected `,` or `}`"), "{m}");
        assert!(h.contains("comma"), "{h}");
        let (l, c, m, h) = err("{\n  acls: []\n}");
        assert_eq!((l, c), (2, 3));
        assert!(m.contains("`acls` is not quoted"), "{m}");
        assert!(h.contains("\"acls\""), "{h}");
        let (l, c, m, _) = err("{\"a\": \"open\n}");
        assert_eq!((l, c), (1, 7));
        assert!(m.contains("past the end of its line"), "{m}");
        let (l, _, m, _) = err("{\"a\": [1, 2}");
        assert_eq!(l, 1);
        assert!(m.contains("`,` or `]`"), "{m}");
        let (_, _, m, _) = err("{\"a\": /* never");
        assert!(m.contains("never closed"), "{m}");
        let (_, _, m, h) = err("{\"a\": 'x'}");
        assert!(m.contains("double quotes"), "{m}");
        assert!(h.contains('"'), "{h}");
        let (_, _, m, _) = err("{\"a\": \"\\x\"}");
        assert!(m.contains("not an escape"), "{m}");
        let (_, _, m, _) = err("{\"a\": 01}");
        assert!(m.contains("not a number"), "{m}");
        let (_, _, m, _) = err("{\"a\": yes}");
        assert!(m.contains("`yes` is not a value"), "{m}");
        let (_, _, m, _) = err("{} {}");
        assert!(m.contains("after the end"), "{m}");
        let (_, _, m, _) = err("  // nothing\n");
        assert!(m.contains("empty"), "{m}");
        let (_, _, m, _) = err("{\"a\" 1}");
        assert!(m.contains("expected `:`"), "{m}");
        let deep = "[".repeat(1000);
        let (_, _, m, _) = err(&deep);
        assert!(m.contains("nested"), "{m}");
    }

    #[test]
    fn agrees_with_serde_json_on_plain_json() {
        let text = r#"{"a": [1, -2.5, true, false, null, "x\u0041"], "b": {"c": {}}}"#;
        let ours = to_json(&parse(text).unwrap());
        let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
    }

    proptest! {
        #[test]
        fn never_panics(s in "[{}\\[\\]\",:/*a-z0-9 \\n\\t\\\\.-]{0,64}") {
            let _ = parse(&s);
        }

        #[test]
        fn any_json_value_reads_back(v in arb_json()) {
            let text = serde_json::to_string_pretty(&v).unwrap();
            // Add a comment and a trailing comma where HuJSON allows them.
            let hu = format!("// head\n{}\n/* tail */", text);
            let got = to_json(&parse(&hu).unwrap());
            prop_assert_eq!(got, v);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "[ -~é\\t\\n]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
