//! Rotated files: how they are named and put back in order.
//!
//! The active file is e.g. `audit.jsonl`. At rotation it is renamed to
//! `audit.000001.jsonl` (then `audit.000002.jsonl`, ...) and a new active file
//! starts with a `segment_start` line linking to the last hash of the file
//! before. Reading order is: numbered files by number, the active file last.
//! This module only names and orders files; it never reads or writes lines.

use std::path::{Path, PathBuf};

/// Why the files of a log cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A path cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A directory holds no audit files.
    #[error("{0}: no .jsonl audit files")]
    Empty(PathBuf),
    /// The paths belong to more than one log.
    #[error("more than one audit log given ({0} and {1}): verify them separately")]
    Mixed(String, String),
}

/// Splits `audit.000003.jsonl` into (`audit`, Some(3), `jsonl`) and `audit.jsonl` into (`audit`, None, `jsonl`).
fn parts(path: &Path) -> Option<(String, Option<u64>, String)> {
    let name = path.file_name()?.to_str()?;
    let (rest, ext) = name.rsplit_once('.')?;
    if let Some((stem, num)) = rest.rsplit_once('.')
        && num.len() == 6
        && let Ok(n) = num.parse::<u64>()
    {
        return Some((stem.to_owned(), Some(n), ext.to_owned()));
    }
    Some((rest.to_owned(), None, ext.to_owned()))
}

/// The name the active file gets when it is rotated as segment `n`.
pub fn rotated_name(active: &Path, n: u64) -> PathBuf {
    let name = active.file_name().and_then(|n| n.to_str()).unwrap_or("audit.jsonl");
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "jsonl"));
    active.with_file_name(format!("{stem}.{n:06}.{ext}"))
}

/// Rotated siblings of `active`, ordered by number.
pub fn rotated(active: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let Some((stem, None, ext)) = parts(active) else {
        return Ok(Vec::new());
    };
    let dir = match active.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if let Some((s, Some(n), e)) = parts(&path)
            && s == stem
            && e == ext
        {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Expands directories (their `.jsonl` files) and puts the files of one log in reading order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SegmentError> {
    let mut files = Vec::new();
    for path in paths {
        let meta =
            std::fs::metadata(path).map_err(|source| SegmentError::Io { path: path.clone(), source })?;
        if meta.is_dir() {
            let io = |source| SegmentError::Io { path: path.clone(), source };
            let before = files.len();
            for entry in std::fs::read_dir(path).map_err(io)? {
                let p = entry.map_err(io)?.path();
                if p.extension().is_some_and(|e| e == "jsonl") && p.is_file() {
                    files.push(p);
                }
            }
            if files.len() == before {
                return Err(SegmentError::Empty(path.clone()));
            }
        } else {
            files.push(path.clone());
        }
    }
    let key = |p: &PathBuf| {
        let (stem, n, ext) = parts(p).unwrap_or_default();
        (stem, ext, n.unwrap_or(u64::MAX))
    };
    files.sort_by_key(key);
    files.dedup();
    if let (Some(first), Some(last)) = (files.first(), files.last()) {
        let (a, b) = (key(first), key(last));
        if (&a.0, &a.1) != (&b.0, &b.1) {
            return Err(SegmentError::Mixed(first.display().to_string(), last.display().to_string()));
        }
    }
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    #[test]
    fn rotated_names_are_numbered_siblings() {
        let active = Path::new("/var/log/exocom/audit.jsonl");
        assert_eq!(rotated_name(active, 3), Path::new("/var/log/exocom/audit.000003.jsonl"));
        assert_eq!(parts(&rotated_name(active, 3)), Some(("audit".into(), Some(3), "jsonl".into())));
    }

    #[test]
    fn discover_orders_numbered_files_then_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["audit.jsonl", "audit.000002.jsonl", "audit.000010.jsonl", "audit.000001.jsonl"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let files = discover(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> =
            files.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["audit.000001.jsonl", "audit.000002.jsonl", "audit.000010.jsonl", "audit.jsonl"]);
        let rotated = rotated(&dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(rotated.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 10]);
    }

    #[test]
    fn two_logs_in_one_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "").unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "").unwrap();
        assert!(matches!(discover(&[dir.path().to_owned()]), Err(SegmentError::Mixed(..))));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(discover(&[empty.path().to_owned()]), Err(SegmentError::Empty(_))));
    }
}
