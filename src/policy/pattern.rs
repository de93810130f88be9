//! Message names and the patterns that match them.
//!
//! A name is dot-separated tokens of `[a-z0-9_-]`. A pattern is a name whose
//! tokens may also be `*` (exactly one token) or, as the last token only, `>`
//! (one or more tokens), optionally followed by `@N` or `@N,M` restricting the
//! message version. Matching is pure and allocation-free; this module must
//! never look at anything but the name and version it is given.

use std::fmt;

/// Why a name or pattern was refused. The `hint` tells the author how to fix it.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct PatternError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl PatternError {
    fn new(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { message: message.into(), hint: hint.into() }
    }
}

/// One token of a pattern.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub enum Token {
    /// Matches exactly this token.
    Literal(Box<str>),
    /// `*`: matches any one token.
    One,
    /// `>`: matches one or more trailing tokens (last position only).
    Rest,
}

/// An inclusive range of versions; a pattern without `@` allows every `u32`.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct VersionRange {
    /// Lowest allowed version.
    pub min: u32,
    /// Highest allowed version.
    pub max: u32,
}

impl VersionRange {
    /// Every version.
    pub const ANY: VersionRange = VersionRange { min: 0, max: u32::MAX };

    /// Whether `version` lies in the range.
    pub fn contains(&self, version: u32) -> bool {
        self.min <= version && version <= self.max
    }

    /// Whether every version in `other` is in `self`.
    pub fn covers(&self, other: &VersionRange) -> bool {
        self.min <= other.min && other.max <= self.max
    }

    /// Whether this is [`VersionRange::ANY`].
    pub fn is_any(&self) -> bool {
        *self == Self::ANY
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            f.write_str("any version")
        } else if self.min == self.max {
            write!(f, "version {}", self.min)
        } else {
            write!(f, "versions {}..={}", self.min, self.max)
        }
    }
}

/// A parsed name pattern such as `todos.*`, `payments.>` or `todos.list@2,3`.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct Pattern {
    text: Box<str>,
    tokens: Box<[Token]>,
    versions: VersionRange,
}

impl Pattern {
    /// Parses a pattern; the error explains what is wrong and how to fix it.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let (name_part, versions) = match text.split_once('@') {
            Some((name, v)) => (name, parse_versions(v)?),
            None => (text, VersionRange::ANY),
        };
        if name_part.is_empty() {
            return Err(PatternError::new(
                "empty name pattern",
                "write a dotted name such as \"todos.list\", or \">\" for every name",
            ));
        }
        let parts: Vec<&str> = name_part.split('.').collect();
        let last = parts.len() - 1;
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "*" => Token::One,
                ">" if i == last => Token::Rest,
                ">" => {
                    return Err(PatternError::new(
                        format!("\">\" may only be the last token in \"{name_part}\""),
                        "use \"*\" to match exactly one token in the middle of a name",
                    ));
                }
                literal => {
                    check_token(literal, name_part)?;
                    Token::Literal(literal.into())
                }
            };
            tokens.push(token);
        }
        Ok(Pattern { text: text.into(), tokens: tokens.into(), versions })
    }

    /// The pattern exactly as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The tokens of the name part.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The versions the pattern allows.
    pub fn versions(&self) -> VersionRange {
        self.versions
    }

    /// Whether `name` at `version` matches. Invalid names never match.
    pub fn matches(&self, name: &str, version: u32) -> bool {
        self.versions.contains(version) && self.matches_name(name)
    }

    /// Whether `name` matches, ignoring versions. Invalid names never match.
    pub fn matches_name(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for token in self.tokens.iter() {
            match token {
                Token::Rest => {
                    // One or more remaining tokens, each valid.
                    let mut count = 0;
                    for part in parts.by_ref() {
                        if !valid_token(part) {
                            return false;
                        }
                        count += 1;
                    }
                    return count > 0;
                }
                Token::One => match parts.next() {
                    Some(part) if valid_token(part) => {}
                    _ => return false,
                },
                Token::Literal(lit) => match parts.next() {
                    Some(part) if part == &**lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// Whether every (name, version) this pattern matches is also matched by
    /// `self`; used to find rules a deny makes useless and to compare policies.
    pub fn covers(&self, other: &Pattern) -> bool {
        if !self.versions.covers(&other.versions) {
            return false;
        }
        let (mine, theirs) = (&self.tokens[..], &other.tokens[..]);
        let ends_rest = matches!(mine.last(), Some(Token::Rest));
        if ends_rest {
            // `a.>` matches names of >= len tokens; `other` must never be shorter.
            if theirs.len() < mine.len() {
                return false;
            }
            mine[..mine.len() - 1].iter().zip(theirs).all(|(a, b)| token_covers(a, b))
        } else {
            theirs.len() == mine.len()
                && !matches!(theirs.last(), Some(Token::Rest))
                && mine.iter().zip(theirs).all(|(a, b)| token_covers(a, b))
        }
    }

    /// A concrete name this pattern matches (wildcards replaced by `x`), used
    /// as a sample in diffs and explanations.
    pub fn sample_name(&self) -> String {
        let mut out = String::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match token {
                Token::Literal(lit) => out.push_str(lit),
                Token::One | Token::Rest => out.push('x'),
            }
        }
        out
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn token_covers(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::One, Token::Literal(_) | Token::One) => true,
        (Token::Literal(x), Token::Literal(y)) => x == y,
        _ => false,
    }
}

/// Checks that `name` is a valid message name (no wildcards).
pub fn check_name(name: &str) -> Result<(), PatternError> {
    if name.is_empty() {
        return Err(PatternError::new("empty message name", "write a dotted name such as \"todos.list\""));
    }
    for part in name.split('.') {
        if part == "*" || part == ">" {
            return Err(PatternError::new(
                format!("\"{name}\" is a pattern, not a name"),
                "a message name has no wildcards",
            ));
        }
        check_token(part, name)?;
    }
    Ok(())
}

/// Whether `name` is a valid message name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.split('.').all(valid_token)
}

/// Whether `token` is one valid name token.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fn check_token(token: &str, whole: &str) -> Result<(), PatternError> {
    if token.is_empty() {
        return Err(PatternError::new(
            format!("empty token in \"{whole}\""),
            "names are tokens separated by single dots, with no leading or trailing dot",
        ));
    }
    if valid_token(token) {
        return Ok(());
    }
    if token.bytes().any(|b| b.is_ascii_uppercase()) && valid_token(&token.to_ascii_lowercase()) {
        return Err(PatternError::new(
            format!("uppercase letters in \"{whole}\": names are lowercase"),
            format!("write \"{}\"", whole.to_ascii_lowercase()),
        ));
    }
    if token.contains('*') || token.contains('>') {
        return Err(PatternError::new(
            format!("wildcard inside the token \"{token}\" of \"{whole}\""),
            "\"*\" and \">\" must be a whole token, e.g. \"todos.*\"",
        ));
    }
    Err(PatternError::new(
        format!("invalid token \"{token}\" in \"{whole}\""),
        "tokens use only a-z, 0-9, \"_\" and \"-\"",
    ))
}

fn parse_versions(text: &str) -> Result<VersionRange, PatternError> {
    let hint = "write \"@N\" for one version or \"@N,M\" for versions N to M (inclusive)";
    let number = |s: &str| -> Result<u32, PatternError> {
        s.trim().parse::<u32>().map_err(|_| PatternError::new(format!("invalid version \"{s}\""), hint))
    };
    let range = match text.split_once(',') {
        Some((a, b)) => VersionRange { min: number(a)?, max: number(b)? },
        None => {
            let v = number(text)?;
            VersionRange { min: v, max: v }
        }
    };
    if range.min > range.max {
        return Err(PatternError::new(
            format!("version range @{text} is empty: no version can match"),
            format!("write \"@{},{}\"", range.max, range.min),
        ));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn literal_and_wildcards() {
        assert!(p("todos.list").matches("todos.list", 1));
        assert!(!p("todos.list").matches("todos.lists", 1));
        assert!(!p("todos.list").matches("todos", 1));
        assert!(p("todos.*").matches("todos.list", 1));
        assert!(!p("todos.*").matches("todos.list.extra", 1));
        assert!(!p("todos.*").matches("todos", 1));
        assert!(p("todos.>").matches("todos.list.extra", 1));
        assert!(p("todos.>").matches("todos.list", 1));
        assert!(!p("todos.>").matches("todos", 1));
        assert!(p(">").matches("anything.at.all", 7));
        assert!(p("*.created").matches("todos.created", 0));
    }

    #[test]
    fn invalid_names_never_match() {
        for name in ["", "todos..list", "Todos.list", "todos.list.", "todos.*", "todos.l!st"] {
            assert!(!p(">").matches_name(name), "{name}");
            assert!(!p("todos.*").matches_name(name), "{name}");
        }
    }

    #[test]
    fn versions() {
        assert!(p("a.b@2").matches("a.b", 2));
        assert!(!p("a.b@2").matches("a.b", 3));
        assert!(p("a.b@2,4").matches("a.b", 4));
        assert!(!p("a.b@2,4").matches("a.b", 1));
        assert!(p("a.b").matches("a.b", u32::MAX));
    }

    #[test]
    fn parse_errors() {
        let e = Pattern::parse("a.>.b").unwrap_err();
        assert!(e.message.contains("last token"), "{e}");
        let e = Pattern::parse("Todos.list").unwrap_err();
        assert_eq!(e.message, "uppercase letters in \"Todos.list\": names are lowercase");
        assert_eq!(e.hint, "write \"todos.list\"");
        assert!(Pattern::parse("a..b").unwrap_err().message.contains("empty token"));
        assert!(Pattern::parse("a.b*").unwrap_err().message.contains("wildcard inside"));
        assert!(Pattern::parse("a.b@x").unwrap_err().message.contains("invalid version"));
        assert!(Pattern::parse("a.b@5,3").unwrap_err().message.contains("no version can match"));
        assert!(Pattern::parse("@1").unwrap_err().message.contains("empty name"));
        assert!(Pattern::parse("a b").unwrap_err().message.contains("invalid token"));
    }

    #[test]
    fn covers() {
        assert!(p(">").covers(&p("a.b")));
        assert!(p("a.>").covers(&p("a.*")));
        assert!(p("a.>").covers(&p("a.b.>")));
        assert!(!p("a.>").covers(&p("a")));
        assert!(!p("a.>").covers(&p(">")));
        assert!(p("a.*").covers(&p("a.b")));
        assert!(!p("a.*").covers(&p("a.>")));
        assert!(!p("a.b").covers(&p("a.*")));
        assert!(p("a.b").covers(&p("a.b@1")));
        assert!(!p("a.b@1").covers(&p("a.b")));
        assert!(p("a.b@1,5").covers(&p("a.b@2,3")));
    }

    /// The obvious matcher, by recursion over tokens, to check the fast one.
    fn reference(pattern: &[&str], name: &[&str]) -> bool {
        match (pattern.first(), name.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) => pattern.len() == 1,
            (Some(&"*"), Some(_)) => reference(&pattern[1..], &name[1..]),
            (Some(a), Some(b)) => a == b && reference(&pattern[1..], &name[1..]),
            _ => false,
        }
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "c", "ab"].prop_map(String::from)
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(
            pat in proptest::collection::vec(prop_oneof![token(), Just("*".to_string())], 1..4),
            rest in any::<bool>(),
            name in proptest::collection::vec(token(), 1..6),
        ) {
            let mut pat = pat;
            if rest { pat.push(">".to_string()); }
            let text = pat.join(".");
            let pattern = Pattern::parse(&text).unwrap();
            let pat_refs: Vec<&str> = pat.iter().map(String::as_str).collect();
            let name_refs: Vec<&str> = name.iter().map(String::as_str).collect();
            prop_assert_eq!(pattern.matches_name(&name.join(".")), reference(&pat_refs, &name_refs));
        }

        #[test]
        fn covers_is_sound(
            a in proptest::collection::vec(prop_oneof![token(), Just("*".to_string()), Just(">".to_string())], 1..4),
            b in proptest::collection::vec(prop_oneof![token(), Just("*".to_string()), Just(">".to_string())], 1..4),
            name in proptest::collection::vec(token(), 1..6),
        ) {
            let (Ok(pa), Ok(pb)) = (Pattern::parse(&a.join(".")), Pattern::parse(&b.join("."))) else {
                return Ok(());
            };
            let name = name.join(".");
            if pa.covers(&pb) && pb.matches_name(&name) {
                prop_assert!(pa.matches_name(&name));
            }
        }
    }
}
