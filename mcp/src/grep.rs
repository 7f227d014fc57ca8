//! `session_grep_search`: a regex search over a session's workspace with ripgrep's engine and defaults —
//! `.gitignore`/`.ignore` rules honoured, hidden files and binary files skipped, symlinks not followed —
//! plus include/exclude globs and a result limit.
//!
//! The walk starts at an `O_PATH` descriptor of the workspace root (walked as `/proc/self/fd/<fd>`, so
//! no path string is resolved again), and every file searched is opened through
//! [`SessionDir::open_file`], i.e. beneath the root: a symlink swapped in during the walk cannot make
//! the search read anything outside the workspace.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use grep_regex::RegexMatcherBuilder;
use grep_searcher::sinks::UTF8;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use ignore::overrides::OverrideBuilder;
use ignore::WalkBuilder;

use crate::error::ToolError;
use crate::workspace::SessionDir;

/// Longest line text returned per match (characters); longer lines are cut with `…`.
const MAX_LINE_CHARS: usize = 500;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;
/// Time budget of one search; past it the results so far are returned, marked truncated.
const TIME_BUDGET: Duration = Duration::from_secs(30);

/// What to search for.
#[derive(Clone, Debug)]
pub struct GrepQuery<'a> {
    pub pattern: &'a str,
    pub case_sensitive: bool,
    pub include: Option<&'a str>,
    pub exclude: Option<&'a str>,
    pub limit: usize,
    pub files_only: bool,
}

/// One matching line.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct GrepMatch {
    /// Workspace-relative path.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// The line (without its line terminator), cut at 500 characters.
    pub text: String,
}

/// The search result.
#[derive(Clone, Debug, Default)]
pub struct GrepResult {
    pub matches: Vec<GrepMatch>,
    /// With `files_only`: the matching files.
    pub files: Vec<String>,
    pub files_searched: usize,
    /// Whether more results exist than were returned (limit reached, or the time budget ran out).
    pub truncated: bool,
    /// Why the list is truncated, when it is.
    pub truncated_reason: Option<String>,
    /// Files that could not be read (path: error), at most 20.
    pub errors: Vec<String>,
}

/// Runs `query` over the session's workspace.
pub fn grep(session: &SessionDir, query: &GrepQuery<'_>) -> Result<GrepResult, ToolError> {
    if query.pattern.is_empty() {
        return Err(ToolError::InvalidArgument {
            message: "the query is empty".into(),
        });
    }
    if query.limit == 0 || query.limit > MAX_LIMIT {
        return Err(ToolError::InvalidArgument {
            message: format!("limit must be between 1 and {MAX_LIMIT}"),
        });
    }
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(!query.case_sensitive)
        .line_terminator(Some(b'\n'))
        .build(query.pattern)
        .map_err(|e| ToolError::InvalidArgument {
            message: format!("invalid regular expression {:?}: {e}", query.pattern),
        })?;
    let root_rel = session.relative(".")?;
    let root = session.open_dir(&root_rel)?;
    let walk_root = format!("/proc/self/fd/{}", root.as_raw_fd());
    let mut overrides = OverrideBuilder::new(&walk_root);
    for (glob, negate) in [(query.include, false), (query.exclude, true)] {
        let Some(glob) = glob.filter(|g| !g.trim().is_empty()) else {
            continue;
        };
        for part in split_globs(glob) {
            let line = if negate {
                format!("!{part}")
            } else {
                part.to_owned()
            };
            overrides
                .add(&line)
                .map_err(|e| ToolError::InvalidArgument {
                    message: format!("invalid glob {part:?}: {e}"),
                })?;
        }
    }
    let overrides = overrides.build().map_err(|e| ToolError::InvalidArgument {
        message: format!("invalid glob: {e}"),
    })?;
    let walker = WalkBuilder::new(&walk_root)
        .overrides(overrides)
        .follow_links(false)
        .parents(false)
        // A workspace is not necessarily a git repository: honour .gitignore anyway, as rg does inside one.
        .require_git(false)
        .build();
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(b'\0'))
        .line_number(true)
        .build();
    let started = Instant::now();
    let mut result = GrepResult::default();
    let mut hits = 0usize;
    'walk: for entry in walker {
        if started.elapsed() > TIME_BUDGET {
            result.truncated = true;
            result.truncated_reason = Some(format!(
                "the search stopped after its {} s time budget",
                TIME_BUDGET.as_secs()
            ));
            break;
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                note_error(&mut result, e.to_string().replace(&walk_root, "."));
                continue;
            }
        };
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&walk_root) else {
            continue;
        };
        let shown = rel.to_string_lossy().into_owned();
        let rel = match session.relative(&shown) {
            Ok(rel) => rel,
            Err(e) => {
                note_error(&mut result, e.to_string());
                continue;
            }
        };
        let file = match session.open_file(&rel) {
            Ok((file, _)) => file,
            Err(e @ ToolError::SessionUnavailable { .. }) => return Err(e),
            Err(e) => {
                note_error(&mut result, e.to_string());
                continue;
            }
        };
        result.files_searched += 1;
        let mut file_hit = false;
        let mut stop = false;
        let outcome = searcher.search_file(
            &matcher,
            &file,
            UTF8(|line_number, line| {
                if query.files_only {
                    file_hit = true;
                    return Ok(false);
                }
                if hits == query.limit {
                    stop = true;
                    return Ok(false);
                }
                hits += 1;
                result.matches.push(GrepMatch {
                    path: shown.clone(),
                    line: line_number,
                    text: cut(line.trim_end_matches(['\n', '\r'])),
                });
                Ok(true)
            }),
        );
        if let Err(e) = outcome {
            note_error(&mut result, format!("{shown}: {e}"));
        }
        if file_hit {
            if result.files.len() == query.limit {
                stop = true;
            } else {
                result.files.push(shown);
            }
        }
        if stop {
            result.truncated = true;
            result.truncated_reason = Some(format!(
                "the limit of {} {} was reached",
                query.limit,
                if query.files_only { "files" } else { "matches" }
            ));
            break 'walk;
        }
    }
    Ok(result)
}

/// Comma-separated globs, except commas inside `{…}` alternations.
fn split_globs(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn cut(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

fn note_error(result: &mut GrepResult, e: String) {
    if result.errors.len() < 20 {
        result.errors.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_split_on_top_level_commas() {
        assert_eq!(split_globs("*.rs, *.toml"), vec!["*.rs", "*.toml"]);
        assert_eq!(split_globs("*.{rs,toml}"), vec!["*.{rs,toml}"]);
        assert_eq!(split_globs(" ,src/**"), vec!["src/**"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "x".repeat(600);
        let c = cut(&long);
        assert_eq!(c.chars().count(), MAX_LINE_CHARS + 1);
        assert!(c.ends_with('…'));
        assert_eq!(cut("short"), "short");
    }
}
