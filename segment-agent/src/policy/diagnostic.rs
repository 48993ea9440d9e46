//! Where a policy came from and what is wrong with it: every error names the
//! file, line and column, says what is wrong and how to fix it, and shows the
//! offending line.

use std::{fmt, sync::Arc};

use serde::Serialize;
use serde_saphyr::Location;

/// A policy file's name (as the user gave it) and text.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            text: text.into(),
        })
    }

    /// The text of 1-based line `line`, without its line break.
    pub fn line(&self, line: u32) -> Option<&str> {
        self.text
            .split('\n')
            .nth(line.checked_sub(1)? as usize)
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
    }
}

/// A place in the source: 1-based line and column (in characters) and the
/// length of the thing pointed at (at least 1 when shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
    #[serde(skip)]
    pub len: u32,
}

impl Pos {
    pub fn from_location(loc: &Location) -> Option<Self> {
        if loc.line() == 0 {
            return None;
        }
        Some(Self {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
            len: u32::try_from(loc.span().len()).unwrap_or(1).max(1),
        })
    }

    pub fn from_place(at: &super::raw::Place) -> Option<Self> {
        (at.line != 0).then(|| Self {
            line: at.line,
            column: at.column,
            len: at.len.max(1),
        })
    }

    /// A sub-range `offset..offset+len` (in characters) of the thing at `self`.
    pub fn narrow(self, offset: usize, len: usize) -> Self {
        Self {
            line: self.line,
            column: self.column.saturating_add(offset as u32),
            len: (len as u32).max(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a policy.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(flatten)]
    pub pos: Option<Pos>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            pos,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(pos: Option<Pos>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            pos,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Renders like a compiler: the message, `file:line:col`, the source line
    /// with a caret under the offending part, and the fix.
    pub fn render(&self, source: &Source) -> String {
        let mut out = String::new();
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{label}: {}\n", self.message));
        match self.pos {
            Some(pos) => {
                out.push_str(&format!(
                    "  --> {}:{}:{}\n",
                    source.name, pos.line, pos.column
                ));
                if let Some(text) = source.line(pos.line) {
                    let gutter = pos.line.to_string().len();
                    let pad = " ".repeat(gutter);
                    let caret_at = pos.column.saturating_sub(1) as usize;
                    let line_chars = text.chars().count();
                    let width = (pos.len as usize)
                        .min(line_chars.saturating_sub(caret_at).max(1))
                        .max(1);
                    out.push_str(&format!("{pad} |\n"));
                    out.push_str(&format!("{} | {}\n", pos.line, text));
                    out.push_str(&format!(
                        "{pad} | {}{}\n",
                        " ".repeat(caret_at),
                        "^".repeat(width)
                    ));
                }
            }
            None => out.push_str(&format!("  --> {}\n", source.name)),
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("  = help: {help}\n"));
        }
        out
    }
}

/// A policy that could not be accepted: one or more errors, each with its
/// place. Nothing has been applied when this is returned.
#[derive(Debug, Clone)]
pub struct PolicyError {
    pub source: Arc<Source>,
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    pub fn new(source: Arc<Source>, diagnostics: Vec<Diagnostic>) -> Self {
        Self {
            source,
            diagnostics,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// The first error as `file:line:col: message`, for one-line logs.
    pub fn summary(&self) -> String {
        match self.errors().next() {
            Some(d) => match d.pos {
                Some(p) => format!(
                    "{}:{}:{}: {}",
                    self.source.name, p.line, p.column, d.message
                ),
                None => format!("{}: {}", self.source.name, d.message),
            },
            None => format!("{}: invalid policy", self.source.name),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", d.render(&self.source))?;
        }
        let n = self.errors().count();
        if n > 1 {
            write!(f, "\n{} errors in {}", n, self.source.name)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment), for "did you mean": `tpc` is one typo from `tcp`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("db-server", "db-server"), 0);
        assert_eq!(edit_distance("db-servr", "db-server"), 1);
        assert_eq!(edit_distance("srcs", "src"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("tpc", "tcp"), 1);
    }

    #[test]
    fn closest_ignores_far_candidates() {
        assert_eq!(closest("finanse", ["finance", "admins"]), Some("finance"));
        assert_eq!(closest("zzz", ["finance", "admins"]), None);
    }

    #[test]
    fn render_points_at_the_column() {
        let src = Source::new("p.yaml", "acls:\n  - src: [tag:x]\n");
        let d = Diagnostic::error(
            Some(Pos {
                line: 2,
                column: 11,
                len: 5,
            }),
            "undefined tag `x`",
        )
        .help("define it under `tags:`");
        let r = d.render(&src);
        assert!(r.contains("p.yaml:2:11"), "{r}");
        assert!(r.contains("2 |   - src: [tag:x]"), "{r}");
        assert!(r.contains("  |           ^^^^^"), "{r}");
        assert!(r.contains("help: define it under `tags:`"), "{r}");
    }
}
