//! Diagnostics: what is wrong in a policy file, where, and how to fix it.
//!
//! Positions are byte spans from the TOML parser, turned here into 1-based
//! line and column (in characters) and rendered the way compilers do: the
//! location, the message, the source line with a caret, and a hint. This
//! module only formats; it never decides what is an error.

use std::fmt;
use std::ops::Range;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub enum Severity {
    /// The policy is refused.
    Error,
    /// The policy loads, but a reviewer should look.
    Warning,
}

/// A position in a policy file, 1-based.
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct Location {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One finding, already rendered-ready (it owns its source line).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file name as given to the parser.
    pub file: String,
    /// Where it starts.
    pub location: Location,
    /// What is wrong.
    pub message: String,
    /// How to fix it (may be empty).
    pub hint: String,
    /// The source line the diagnostic points into (no newline). A line
    /// longer than 160 characters is cut to a window around the span: it
    /// then ends in `…` if cut at the end, and `line_offset` says how much
    /// was cut at the start (rendered as a leading `…`).
    pub source_line: String,
    /// How many characters of the line were cut before `source_line`
    /// starts (0 unless the line was cut).
    pub line_offset: u32,
    /// How many characters to underline, at least 1.
    pub width: u32,
}

impl Diagnostic {
    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{}:{}: {kind}: {}", self.file, self.location, self.message)?;
        let gutter = self.location.line.to_string();
        let pad = " ".repeat(gutter.len());
        let cut = if self.line_offset > 0 { "…" } else { "" };
        writeln!(f, " {gutter} | {cut}{}", self.source_line)?;
        // Where the span starts on the printed line (after a leading `…`).
        let at = (self.location.column.saturating_sub(1)).saturating_sub(self.line_offset) as usize
            + cut.chars().count();
        let indent = " ".repeat(at);
        let carets = "^".repeat(self.width.max(1) as usize);
        write!(f, " {pad} | {indent}{carets}")?;
        if !self.hint.is_empty() {
            write!(f, "\n {pad} = hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one source text to lines and columns.
#[derive(Debug)]
pub struct SourceMap<'a> {
    file: &'a str,
    source: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    /// Indexes `source` (the whole file) named `file`.
    pub fn new(file: &'a str, source: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Self { file, source, line_starts }
    }

    /// Length of the text in bytes.
    pub fn source_len(&self) -> usize {
        self.source.len()
    }

    /// The location of byte offset `offset` (clamped to the text).
    pub fn location(&self, offset: usize) -> Location {
        let offset = self.clamp(offset);
        let line = self.line_starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let start = self.line_starts[line];
        let column = self.source[start..offset].chars().count() + 1;
        Location { line: to_u32(line + 1), column: to_u32(column) }
    }

    /// A diagnostic at `span`.
    pub fn diagnostic(
        &self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        let start = self.clamp(span.start);
        let location = self.location(start);
        let line_index = (location.line - 1) as usize;
        let line_start = self.line_starts[line_index];
        let line_end =
            self.line_starts.get(line_index + 1).map_or(self.source.len(), |&next| next.saturating_sub(1));
        let line = self.source[line_start..line_end].trim_end_matches('\r');
        let end = self.clamp(span.end.max(start)).min(line_end.max(start));
        let mut width = to_u32(self.source[start..end].chars().count()).max(1);
        let (source_line, line_offset) = if line.len() <= MAX_LINE_CHARS {
            (line.to_string(), 0)
        } else {
            // A long line (one-line files, generated junk): show a window.
            let column = location.column.saturating_sub(1) as usize;
            let skip = column.saturating_sub(MAX_LINE_CHARS / 4);
            let mut shown: String = line.chars().skip(skip).take(MAX_LINE_CHARS).collect();
            let shown_chars = shown.chars().count();
            if line.chars().count() > skip + shown_chars {
                shown.push('…');
            }
            width = width.min(to_u32(shown_chars.saturating_sub(column - skip)).max(1));
            (shown, to_u32(skip))
        };
        Diagnostic {
            severity,
            file: self.file.to_string(),
            location,
            message: message.into(),
            hint: hint.into(),
            source_line,
            line_offset,
            width,
        }
    }

    fn clamp(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

/// Longest source line a diagnostic shows whole, in characters.
const MAX_LINE_CHARS: usize = 160;

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a likely typo (for "did you mean" hints).
pub fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let len = word.chars().count();
    let limit = (len / 3).clamp(1, 3);
    candidates
        .into_iter()
        // The distance is at least the difference in length: skip the
        // quadratic work for words that cannot be close.
        .filter(|c| c.chars().count().abs_diff(len) <= limit)
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit (typos
/// like "recieve" are one step from "receive").
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
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
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based_in_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        let map = SourceMap::new("f.toml", src);
        assert_eq!(map.location(0), Location { line: 1, column: 1 });
        let x = src.find('"').unwrap();
        assert_eq!(map.location(x), Location { line: 2, column: 6 });
    }

    #[test]
    fn renders_with_caret_and_hint() {
        let src = "[meta]\ntrust_domian = \"x\"\n";
        let map = SourceMap::new("p.toml", src);
        let d = map.diagnostic(Severity::Error, 7..19, "unknown key", "did you mean \"trust_domain\"?");
        assert_eq!(
            d.to_string(),
            "p.toml:2:1: error: unknown key\n 2 | trust_domian = \"x\"\n   | ^^^^^^^^^^^^\n   = hint: did you mean \"trust_domain\"?"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("recieve", ["send", "receive", "id"]), Some("receive"));
        assert_eq!(did_you_mean("zzz", ["send", "receive"]), None);
        assert_eq!(did_you_mean("wbe", ["todo", "web"]), Some("web"));
        assert_eq!(did_you_mean("trust_domian", ["trust_domain", "serial"]), Some("trust_domain"));
    }
}
