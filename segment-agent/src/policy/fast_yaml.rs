//! A fast reader for the YAML that policies are written in: block mappings
//! and sequences, flow sequences and mappings, plain and quoted scalars,
//! comments. Big policies are lists of small rules, and serde-saphyr reads
//! them at about 10 MB/s; this reads them an order of magnitude faster.
//!
//! It is only a shortcut. Whatever it is not sure about — anchors, tags,
//! block scalars, escapes, multi-line scalars, plain scalars that YAML
//! could type as something other than a string or a canonical integer,
//! unknown keys, duplicate keys, missing fields, any syntax error — makes it
//! decline, and the caller reads the file again with serde-saphyr, which
//! stays the reference: it produces every error message, and a property
//! test checks that both give the same [`RawPolicy`], positions included.

use std::collections::HashSet;

use super::raw::{
    Entries, OneOrMany, Place, RawEnforce, RawPolicy, RawRule, RawTest, Spanned, Text,
};

/// This reader cannot vouch for the text: read it with the full reader.
#[derive(Debug)]
pub struct Decline;

type R<T> = Result<T, Decline>;

/// Reads `text`, or declines (see the module documentation).
pub fn read(text: &str) -> Option<RawPolicy> {
    let mut p = Parser::new(text);
    let root = p.document().ok()?;
    policy(root).ok()
}

#[derive(Debug)]
enum Kind<'a> {
    /// A scalar's text; `plain` if it was written without quotes.
    Scalar {
        text: &'a str,
        plain: bool,
    },
    Seq(Vec<Node<'a>>),
    Map(Vec<(Node<'a>, Node<'a>)>),
}

#[derive(Debug)]
struct Node<'a> {
    kind: Kind<'a>,
    at: Place,
}

struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
    line: u32,
    line_start: usize,
    /// (byte index, column) of the last column computed on this line, so
    /// that columns are counted in characters without rescanning the line.
    col_cache: (usize, u32),
    /// Nesting depth, bounded so that hostile input cannot exhaust the
    /// stack (serde-saphyr has its own limit, and gives the error).
    depth: u32,
}

/// Policies nest four or five levels deep.
const MAX_DEPTH: u32 = 32;

fn is_space(b: u8) -> bool {
    b == b' '
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            s: text.as_bytes(),
            i: 0,
            line: 1,
            line_start: 0,
            col_cache: (0, 1),
            depth: 0,
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Decline);
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }

    fn column(&mut self) -> u32 {
        let (from, mut col) = self.col_cache;
        debug_assert!(from <= self.i);
        col += chars(&self.s[from..self.i]);
        self.col_cache = (self.i, col);
        col
    }

    /// The place of the text from here to `end` (a byte index on this line).
    fn place(&mut self, end: usize) -> Place {
        let column = self.column();
        Place {
            line: self.line,
            column,
            len: chars(&self.s[self.i..end]),
            byte: Some(self.i as u64),
        }
    }

    /// Moves past a line break at `self.i`.
    fn newline(&mut self) {
        debug_assert_eq!(self.peek(), Some(b'\n'));
        self.i += 1;
        self.line += 1;
        self.line_start = self.i;
        self.col_cache = (self.i, 1);
    }

    /// Skips spaces, then a comment if one starts here; stops at the line
    /// break (or the end). Tabs and carriage returns are declined.
    fn rest_of_line(&mut self) -> R<()> {
        while let Some(b) = self.peek() {
            match b {
                b' ' => self.i += 1,
                b'#' if self.i == self.line_start || self.prev_is_space() => {
                    while let Some(b) = self.peek() {
                        if b == b'\n' {
                            break;
                        }
                        if b == b'\r' {
                            return Err(Decline);
                        }
                        self.i += 1;
                    }
                }
                b'\n' => return Ok(()),
                _ => return Err(Decline),
            }
        }
        Ok(())
    }

    fn prev_is_space(&self) -> bool {
        self.i > 0 && is_space(self.s[self.i - 1])
    }

    /// From the end of a line, moves to the first character of the next
    /// line with content and returns its indentation; `None` at the end of
    /// the text.
    fn next_content_line(&mut self) -> R<Option<u32>> {
        loop {
            self.rest_of_line()?;
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => self.newline(),
                Some(_) => return Err(Decline),
            }
            let mut n = 0;
            while self.peek() == Some(b' ') {
                self.i += 1;
                n += 1;
            }
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => continue,
                Some(b'#') => continue,
                Some(b'\t' | b'\r') => return Err(Decline),
                Some(_) => {
                    if n == 0 && self.s[self.i..].starts_with(b"---")
                        || self.s[self.i..].starts_with(b"...")
                        || self.peek() == Some(b'%')
                    {
                        return Err(Decline);
                    }
                    return Ok(Some(n));
                }
            }
        }
    }

    fn document(&mut self) -> R<Node<'a>> {
        if self.s.starts_with(&[0xef, 0xbb, 0xbf]) {
            return Err(Decline);
        }
        // Position on the first content line as if coming from a line end.
        let mut n = 0;
        while self.peek() == Some(b' ') {
            self.i += 1;
            n += 1;
        }
        let indent = match self.peek() {
            None => return Err(Decline),
            Some(b'\n' | b'#') => self.next_content_line()?.ok_or(Decline)?,
            Some(b'\t' | b'\r' | b'%') => return Err(Decline),
            Some(_) if self.s[self.i..].starts_with(b"---") => return Err(Decline),
            Some(_) => n,
        };
        if indent != 0 {
            return Err(Decline);
        }
        let node = self.block_node(0, -1)?;
        // `block_node` stops at the start of a line with less indentation,
        // which at the top can only be the end.
        if self.i < self.s.len() {
            return Err(Decline);
        }
        Ok(node)
    }

    /// A block node starting at `self.i`, at column `indent` + 1; `parent`
    /// is the indentation of the enclosing block. Returns positioned at
    /// the first content of the next line whose indentation is less than
    /// or equal to `parent`'s children's, or at the end.
    fn block_node(&mut self, indent: u32, parent: i64) -> R<Node<'a>> {
        if self.peek() == Some(b'-') && self.peek_at(1).is_none_or(|b| b == b' ' || b == b'\n') {
            return self.block_seq(indent);
        }
        if self.key_ahead()? {
            return self.block_map(indent);
        }
        let node = self.inline_value(parent)?;
        self.end_of_value(parent)?;
        Ok(node)
    }

    /// Whether a mapping key (`key:` followed by a space or line end)
    /// starts here.
    fn key_ahead(&self) -> R<bool> {
        let mut j = self.i;
        match self.s.get(j) {
            Some(b'"' | b'\'') => {
                let q = self.s[j];
                j += 1;
                while let Some(&b) = self.s.get(j) {
                    if b == q {
                        break;
                    }
                    if b == b'\n' {
                        return Ok(false);
                    }
                    j += 1;
                }
                j += 1;
                Ok(self.s.get(j) == Some(&b':')
                    && self.s.get(j + 1).is_none_or(|b| *b == b' ' || *b == b'\n'))
            }
            Some(b'[' | b'{') => Ok(false),
            _ => {
                while let Some(&b) = self.s.get(j) {
                    match b {
                        b'\n' => return Ok(false),
                        b'#' if j > 0 && is_space(self.s[j - 1]) => return Ok(false),
                        b':' if self.s.get(j + 1).is_none_or(|b| *b == b' ' || *b == b'\n') => {
                            return Ok(true);
                        }
                        _ => j += 1,
                    }
                }
                Ok(false)
            }
        }
    }

    /// After a value written on its line: the rest of the line must be
    /// empty, and the next content line must not be indented deeper than
    /// `parent`'s children (which would make it a continuation this reader
    /// does not handle).
    fn end_of_value(&mut self, parent: i64) -> R<()> {
        match self.next_content_line()? {
            None => Ok(()),
            Some(n) if i64::from(n) <= parent.max(0) => Ok(()),
            Some(_) => Err(Decline),
        }
    }

    fn block_map(&mut self, indent: u32) -> R<Node<'a>> {
        self.enter()?;
        let at = {
            let mut p = self.place(self.i);
            p.len = 0;
            p
        };
        let mut entries = Vec::new();
        loop {
            let key = self.scalar(false)?;
            if self.peek() != Some(b':') {
                return Err(Decline);
            }
            self.i += 1;
            while self.peek() == Some(b' ') {
                self.i += 1;
            }
            let value = match self.peek() {
                None | Some(b'\n' | b'#') => {
                    // The value is on the following lines.
                    let Some(n) = self.next_content_line()? else {
                        return Err(Decline);
                    };
                    let seq_here = self.peek() == Some(b'-')
                        && self.peek_at(1).is_none_or(|b| b == b' ' || b == b'\n');
                    if n > indent {
                        self.block_node(n, i64::from(indent))?
                    } else if n == indent && seq_here {
                        // serde-saphyr places a sequence at the same
                        // indentation as its key at its first item.
                        let mut seq = self.block_seq(n)?;
                        let Kind::Seq(items) = &seq.kind else {
                            return Err(Decline);
                        };
                        let first = items.first().ok_or(Decline)?;
                        if first.at.line != seq.at.line {
                            return Err(Decline);
                        }
                        seq.at = Place {
                            len: 0,
                            ..first.at.clone()
                        };
                        seq
                    } else {
                        return Err(Decline);
                    }
                }
                Some(_) => {
                    let v = self.inline_value(i64::from(indent))?;
                    self.end_of_value(i64::from(indent))?;
                    v
                }
            };
            entries.push((key, value));
            // Now at the first content of a line (or the end).
            if self.i >= self.s.len() {
                break;
            }
            let n = self.column() - 1;
            if n < indent {
                break;
            }
            if n > indent {
                return Err(Decline);
            }
            if !self.key_ahead()? {
                // A sequence at the same indentation belongs to nobody here.
                return Err(Decline);
            }
        }
        self.depth -= 1;
        Ok(Node {
            kind: Kind::Map(entries),
            at,
        })
    }

    fn block_seq(&mut self, indent: u32) -> R<Node<'a>> {
        self.enter()?;
        let at = {
            let mut p = self.place(self.i);
            p.len = 0;
            p
        };
        let mut items = Vec::new();
        loop {
            // At `-`.
            self.i += 1;
            let mut spaces = 0;
            while self.peek() == Some(b' ') {
                self.i += 1;
                spaces += 1;
            }
            let item = match self.peek() {
                None | Some(b'\n' | b'#') => {
                    let Some(n) = self.next_content_line()? else {
                        return Err(Decline);
                    };
                    if n <= indent {
                        return Err(Decline);
                    }
                    self.block_node(n, i64::from(indent))?
                }
                Some(b'-') => return Err(Decline),
                Some(_) => {
                    let col = indent + 1 + spaces;
                    if self.key_ahead()? {
                        self.block_map(col)?
                    } else {
                        let v = self.inline_value(i64::from(indent))?;
                        self.end_of_value(i64::from(indent))?;
                        v
                    }
                }
            };
            items.push(item);
            if self.i >= self.s.len() {
                break;
            }
            let n = self.column() - 1;
            if n < indent {
                break;
            }
            if n > indent {
                return Err(Decline);
            }
            if !(self.peek() == Some(b'-')
                && self.peek_at(1).is_none_or(|b| b == b' ' || b == b'\n'))
            {
                // The mapping this sequence is the value of goes on.
                break;
            }
        }
        self.depth -= 1;
        Ok(Node {
            kind: Kind::Seq(items),
            at,
        })
    }

    /// A value written on the current line: a flow collection or a scalar.
    fn inline_value(&mut self, parent: i64) -> R<Node<'a>> {
        match self.peek() {
            Some(b'[') => self.flow_seq(parent),
            Some(b'{') => self.flow_map(parent),
            _ => self.scalar(false),
        }
    }

    /// A scalar: quoted, or plain (in flow context if `flow`).
    fn scalar(&mut self, flow: bool) -> R<Node<'a>> {
        let start = self.i;
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => {
                let mut j = start + 1;
                loop {
                    match self.s.get(j) {
                        None | Some(b'\n' | b'\r' | b'\\') => return Err(Decline),
                        Some(&b) if b == q => break,
                        Some(_) => j += 1,
                    }
                }
                if q == b'\'' && self.s.get(j + 1) == Some(&b'\'') {
                    return Err(Decline);
                }
                let at = self.place(j + 1);
                let text = &self.text[start + 1..j];
                self.i = j + 1;
                Ok(Node {
                    kind: Kind::Scalar { text, plain: false },
                    at,
                })
            }
            Some(b) => {
                if matches!(
                    b,
                    b'-' | b'?'
                        | b':'
                        | b','
                        | b'['
                        | b']'
                        | b'{'
                        | b'}'
                        | b'#'
                        | b'&'
                        | b'*'
                        | b'!'
                        | b'|'
                        | b'>'
                        | b'%'
                        | b'@'
                        | b'`'
                        | b' '
                        | b'\t'
                        | b'\r'
                        | b'\n'
                ) {
                    return Err(Decline);
                }
                let mut j = start;
                let mut end = start;
                while let Some(&b) = self.s.get(j) {
                    match b {
                        b'\n' => break,
                        b'\r' | b'\t' => return Err(Decline),
                        b' ' => {
                            j += 1;
                            continue;
                        }
                        b'#' if is_space(self.s[j - 1]) => break,
                        b':' => {
                            let next = self.s.get(j + 1).copied();
                            if next.is_none_or(|n| n == b' ' || n == b'\n')
                                || (flow && next.is_some_and(is_flow_indicator))
                            {
                                break;
                            }
                        }
                        b if flow && is_flow_indicator(b) => break,
                        _ => {}
                    }
                    j += 1;
                    end = j;
                }
                let at = self.place(end);
                let text = &self.text[start..end];
                self.i = end;
                Ok(Node {
                    kind: Kind::Scalar { text, plain: true },
                    at,
                })
            }
            None => Err(Decline),
        }
    }

    /// Skips spaces, line breaks and comments inside a flow collection.
    /// Continuation lines must be indented at least as deep as `parent`.
    fn flow_space(&mut self, parent: i64) -> R<()> {
        loop {
            match self.peek() {
                Some(b' ') => self.i += 1,
                Some(b'#') if self.prev_is_space() || self.i == self.line_start => {
                    while self.peek().is_some_and(|b| b != b'\n') {
                        self.i += 1;
                    }
                }
                Some(b'\n') => {
                    self.newline();
                    let mut n = 0i64;
                    while self.peek() == Some(b' ') {
                        self.i += 1;
                        n += 1;
                    }
                    // serde-saphyr takes lines as indented as the block
                    // the collection is in; less, or at the left margin,
                    // is left to it.
                    if self.peek().is_some_and(|b| b != b'\n' && b != b'#')
                        && (n < parent || n == 0)
                    {
                        return Err(Decline);
                    }
                }
                Some(b'\t' | b'\r') => return Err(Decline),
                _ => return Ok(()),
            }
        }
    }

    fn flow_seq(&mut self, parent: i64) -> R<Node<'a>> {
        self.enter()?;
        let at = self.place(self.i + 1);
        self.i += 1;
        let mut items = Vec::new();
        self.flow_space(parent)?;
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            loop {
                let item = match self.peek() {
                    Some(b'[') => self.flow_seq(parent)?,
                    Some(b'{') => self.flow_map(parent)?,
                    _ => self.scalar(true)?,
                };
                items.push(item);
                if self.flow_next(parent, b']')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(Node {
            kind: Kind::Seq(items),
            at,
        })
    }

    /// After an item of a flow collection closed by `close`: a comma (not
    /// a trailing one) or the closer. `Ok(true)`: the collection ended.
    fn flow_next(&mut self, parent: i64, close: u8) -> R<bool> {
        self.flow_space(parent)?;
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.flow_space(parent)?;
                if self.peek() == Some(close) {
                    return Err(Decline);
                }
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Decline),
        }
    }

    fn flow_map(&mut self, parent: i64) -> R<Node<'a>> {
        self.enter()?;
        let at = self.place(self.i + 1);
        self.i += 1;
        let mut entries = Vec::new();
        self.flow_space(parent)?;
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                let key = self.scalar(true)?;
                if self.peek() != Some(b':') || self.peek_at(1) != Some(b' ') {
                    return Err(Decline);
                }
                self.i += 1;
                self.flow_space(parent)?;
                let value = match self.peek() {
                    Some(b'[') => self.flow_seq(parent)?,
                    Some(b'{') => self.flow_map(parent)?,
                    Some(b',' | b'}') => return Err(Decline),
                    _ => self.scalar(true)?,
                };
                entries.push((key, value));
                if self.flow_next(parent, b'}')? {
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(Node {
            kind: Kind::Map(entries),
            at,
        })
    }
}

/// Characters in UTF-8 bytes.
fn chars(b: &[u8]) -> u32 {
    if b.is_ascii() {
        b.len() as u32
    } else {
        b.iter().filter(|&&c| (c & 0xc0) != 0x80).count() as u32
    }
}

// ---- Nodes → the raw policy, exactly as serde-saphyr would build it ----

/// What a scalar reads as for [`Text`]: its characters, when YAML would
/// type it as a string or as an integer written the way Rust prints it.
fn text(n: &Node<'_>) -> R<Text> {
    match n.kind {
        Kind::Scalar { text, plain: false } => Ok(Text(text.to_owned())),
        Kind::Scalar { text, plain: true } if plain_is_text(text) => Ok(Text(text.to_owned())),
        _ => Err(Decline),
    }
}

/// Whether serde-saphyr reads this plain scalar as these very characters
/// (as a string, or as an unsigned integer printed back the same way).
/// Conservative: anything that might be a boolean, null, float or another
/// spelling of a number is left to the full reader.
fn plain_is_text(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(&first) = b.first() else {
        return false;
    };
    // A letter (or any non-ASCII character) first: a string, unless it is
    // one of the words YAML reads as a boolean or null.
    if first.is_ascii_alphabetic() || !first.is_ascii() {
        const SPECIAL: &[&str] = &[
            "true", "false", "null", "yes", "no", "on", "off", "y", "n", "inf", "nan", "infinity",
        ];
        return !SPECIAL.iter().any(|w| s.eq_ignore_ascii_case(w));
    }
    if first.is_ascii_digit() {
        if b.iter().all(u8::is_ascii_digit) {
            return (b.len() == 1 || first != b'0') && s.parse::<u64>().is_ok();
        }
        let dots = b.iter().filter(|&&c| c == b'.').count();
        return !b.contains(&b'_') && (dots >= 2 || b.contains(&b':') || b.contains(&b'/'));
    }
    false
}

fn spanned<T>(value: T, n: &Node<'_>) -> Spanned<T> {
    Spanned {
        value,
        at: n.at.clone(),
    }
}

fn spanned_text(n: &Node<'_>) -> R<Spanned<Text>> {
    Ok(spanned(text(n)?, n))
}

fn one_or_many(n: &Node<'_>) -> R<Spanned<OneOrMany>> {
    let v = match &n.kind {
        Kind::Scalar { .. } => OneOrMany::One(text(n)?),
        Kind::Seq(items) => OneOrMany::Many(items.iter().map(spanned_text).collect::<R<_>>()?),
        Kind::Map(_) => return Err(Decline),
    };
    Ok(spanned(v, n))
}

fn boolean(n: &Node<'_>) -> R<Spanned<bool>> {
    match n.kind {
        Kind::Scalar {
            text: "true",
            plain: true,
        } => Ok(spanned(true, n)),
        Kind::Scalar {
            text: "false",
            plain: true,
        } => Ok(spanned(false, n)),
        _ => Err(Decline),
    }
}

/// A mapping's entries by key, declining duplicates.
fn fields<'n, 'a>(n: &'n Node<'a>) -> R<Vec<(&'a str, &'n Node<'a>)>> {
    let Kind::Map(entries) = &n.kind else {
        return Err(Decline);
    };
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Kind::Scalar { text, .. } = k.kind else {
            return Err(Decline);
        };
        if out.iter().any(|(seen, _)| *seen == text) {
            return Err(Decline);
        }
        out.push((text, v));
    }
    Ok(out)
}

fn entries<V>(n: &Node<'_>, value: fn(&Node<'_>) -> R<V>) -> R<Entries<Spanned<Text>, V>> {
    let Kind::Map(list) = &n.kind else {
        return Err(Decline);
    };
    let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
    let mut out = Vec::with_capacity(list.len());
    for (k, v) in list {
        let key = spanned_text(k)?;
        let Kind::Scalar { text, .. } = k.kind else {
            return Err(Decline);
        };
        if !seen.insert(text) {
            return Err(Decline);
        }
        out.push((key, value(v)?));
    }
    Ok(Entries(out))
}

fn seq<T>(n: &Node<'_>, item: fn(&Node<'_>) -> R<T>) -> R<Vec<T>> {
    match &n.kind {
        Kind::Seq(items) => items.iter().map(item).collect(),
        _ => Err(Decline),
    }
}

fn rule(n: &Node<'_>) -> R<Spanned<RawRule>> {
    let (mut action, mut src, mut dst, mut proto, mut name) = (None, None, None, None, None);
    for (k, v) in fields(n)? {
        match k {
            "action" => action = Some(spanned_text(v)?),
            "src" => src = Some(one_or_many(v)?),
            "dst" => dst = Some(one_or_many(v)?),
            "proto" => proto = Some(one_or_many(v)?),
            "name" => name = Some(spanned_text(v)?),
            _ => return Err(Decline),
        }
    }
    Ok(spanned(
        RawRule {
            action,
            src: src.ok_or(Decline)?,
            dst: dst.ok_or(Decline)?,
            proto,
            name,
        },
        n,
    ))
}

fn test(n: &Node<'_>) -> R<Spanned<RawTest>> {
    let (mut src, mut accept, mut deny, mut proto) = (None, None, None, None);
    for (k, v) in fields(n)? {
        match k {
            "src" => src = Some(spanned_text(v)?),
            "accept" => accept = Some(one_or_many(v)?),
            "deny" => deny = Some(one_or_many(v)?),
            "proto" => proto = Some(spanned_text(v)?),
            _ => return Err(Decline),
        }
    }
    Ok(spanned(
        RawTest {
            src: src.ok_or(Decline)?,
            accept,
            deny,
            proto,
        },
        n,
    ))
}

fn enforce(n: &Node<'_>) -> R<Spanned<RawEnforce>> {
    let (mut ingress, mut egress) = (None, None);
    for (k, v) in fields(n)? {
        match k {
            "ingress" => ingress = Some(boolean(v)?),
            "egress" => egress = Some(boolean(v)?),
            _ => return Err(Decline),
        }
    }
    Ok(spanned(RawEnforce { ingress, egress }, n))
}

fn policy(root: Node<'_>) -> R<RawPolicy> {
    let mut p = RawPolicy::default();
    for (k, v) in fields(&root)? {
        match k {
            "hosts" => p.hosts = entries(v, spanned_text)?,
            "users" => p.users = entries(v, one_or_many)?,
            "groups" => p.groups = entries(v, one_or_many)?,
            "tags" => p.tags = entries(v, one_or_many)?,
            "tagOwners" => p.tag_owners = entries(v, one_or_many)?,
            "acls" => p.acls = seq(v, rule)?,
            "failsafe" => p.failsafe = seq(v, rule)?,
            "tests" => p.tests = seq(v, test)?,
            "enforce" => p.enforce = Some(enforce(v)?),
            "mode" => p.mode = Some(spanned_text(v)?),
            "modes" => p.modes = entries(v, spanned_text)?,
            _ => return Err(Decline),
        }
    }
    Ok(p)
}
