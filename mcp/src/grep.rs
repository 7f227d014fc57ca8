//! `session_grep_search`: a regex search over a session's workspace with ripgrep's engine and defaults —
//! `.gitignore`/`.ignore` rules honoured, hidden and binary files skipped, symlinks not followed — plus
//! include/exclude globs, a result limit and a time budget.
//!
//! The walk is done here, on descriptors, not by path: every directory and file is opened with
//! `openat2(parent_fd, name, O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`
//! starting from the session root, so nothing the walk reads — files searched, ignore files,
//! directories listed — can be outside the workspace, even if the workspace changes during the search
//! (a directory swapped for a symlink fails to open and is skipped). Ignore files are read only if they
//! are regular files, at most 1 MiB each. Git's global and `info/exclude` files are not consulted: only
//! rules inside the workspace apply. Every read checks the time budget, so a slow or endless file ends
//! the search in time.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::sinks::UTF8;
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::overrides::{Override, OverrideBuilder};
use ignore::Match;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::ToolError;
use crate::workspace::SessionDir;

/// Longest line text returned per match (characters); longer lines are cut with `…`.
const MAX_LINE_CHARS: usize = 500;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;
/// Time budget of one search; past it the results so far are returned, marked truncated.
const TIME_BUDGET: Duration = Duration::from_secs(30);
/// Largest ignore file read.
const MAX_IGNORE_FILE: u64 = 1 << 20;
/// Deepest directory nesting walked.
const MAX_DEPTH: usize = 256;
/// Ignore files read in each directory, lowest precedence first (as ripgrep).
const IGNORE_FILES: [&str; 2] = [".gitignore", ".ignore"];
/// How every walk step resolves: one name below an already confined directory, never through a link.
const WALK: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Paths given to the glob matchers are rooted here (their root-stripping wants absolute paths).
const GLOB_ROOT: &str = "/";

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
    /// Files or directories that could not be searched (path: error), at most 20.
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
    let overrides = overrides(query)?;
    let root = session.open_dir_for_reading(&session.relative(".")?)?;
    let mut walk = Walk {
        query,
        matcher,
        overrides,
        searcher: SearcherBuilder::new()
            .binary_detection(BinaryDetection::quit(b'\0'))
            .line_number(true)
            .build(),
        deadline: Instant::now() + TIME_BUDGET,
        hits: 0,
        result: GrepResult::default(),
    };
    let mut ignores = Vec::new();
    // Stopping early (limit, budget) is not an error; the result says why.
    let _ = walk.dir(root, PathBuf::new(), &mut ignores, 0);
    Ok(walk.result)
}

/// Include globs (whitelist) and exclude globs (`!glob`), gitignore syntax.
fn overrides(query: &GrepQuery<'_>) -> Result<Override, ToolError> {
    let mut builder = OverrideBuilder::new(GLOB_ROOT);
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
            builder.add(&line).map_err(|e| ToolError::InvalidArgument {
                message: format!("invalid glob {part:?}: {e}"),
            })?;
        }
    }
    builder.build().map_err(|e| ToolError::InvalidArgument {
        message: format!("invalid glob: {e}"),
    })
}

/// Why the walk stopped early.
enum Stop {
    Limit,
    Budget,
}

struct Walk<'q> {
    query: &'q GrepQuery<'q>,
    matcher: RegexMatcher,
    overrides: Override,
    searcher: Searcher,
    deadline: Instant,
    hits: usize,
    result: GrepResult,
}

impl Walk<'_> {
    /// Searches the directory `fd` (workspace path `rel`) and below. `ignores` holds the ignore rules of
    /// its ancestors, innermost last.
    fn dir(
        &mut self,
        fd: OwnedFd,
        rel: PathBuf,
        ignores: &mut Vec<Gitignore>,
        depth: usize,
    ) -> Result<(), Stop> {
        self.check_budget()?;
        let pushed = self.load_ignores(&fd, &rel, ignores);
        let outcome = self.entries(&fd, &rel, ignores, depth);
        ignores.truncate(ignores.len() - pushed);
        outcome
    }

    fn entries(
        &mut self,
        fd: &OwnedFd,
        rel: &Path,
        ignores: &mut Vec<Gitignore>,
        depth: usize,
    ) -> Result<(), Stop> {
        let mut names: Vec<(OsString, FileType)> = Vec::new();
        let dir = match rfs::Dir::read_from(fd) {
            Ok(dir) => dir,
            Err(e) => {
                self.note(rel, e);
                return Ok(());
            }
        };
        for entry in dir {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.note(rel, e);
                    break;
                }
            };
            let name = entry.file_name().to_bytes();
            // Hidden names (and `.`/`..`) are skipped, as ripgrep does by default.
            if name.first() == Some(&b'.') {
                continue;
            }
            names.push((OsStr::from_bytes(name).to_owned(), entry.file_type()));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, dtype) in names {
            self.check_budget()?;
            let child = rel.join(&name);
            let kind = match dtype {
                FileType::Unknown => match rfs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileType::from_raw_mode(st.st_mode),
                    Err(_) => continue,
                },
                known => known,
            };
            match kind {
                FileType::Directory => {
                    if depth >= MAX_DEPTH || self.skipped(&child, true, ignores) {
                        continue;
                    }
                    match open_at(fd, &name, OFlags::DIRECTORY) {
                        Ok(sub) => self.dir(sub, child, ignores, depth + 1)?,
                        Err(e) => self.note(&child, e),
                    }
                }
                FileType::RegularFile => {
                    if self.skipped(&child, false, ignores) {
                        continue;
                    }
                    self.file(fd, &name, &child)?;
                }
                // Symlinks are not followed; FIFOs, sockets and devices are not searched.
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `rel` is left out: by an exclude glob, by the include globs (files), or by the innermost
    /// ignore rule that matches it.
    fn skipped(&self, rel: &Path, is_dir: bool, ignores: &[Gitignore]) -> bool {
        let rooted = Path::new(GLOB_ROOT).join(rel);
        if self.overrides.matched(&rooted, is_dir).is_ignore() {
            return true;
        }
        for rules in ignores.iter().rev() {
            match rules.matched(&rooted, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }

    /// Reads the ignore files of directory `fd` into `ignores`; returns how many matchers were pushed.
    fn load_ignores(&mut self, fd: &OwnedFd, rel: &Path, ignores: &mut Vec<Gitignore>) -> usize {
        let mut pushed = 0;
        for name in IGNORE_FILES {
            let Some(text) = read_small(fd, OsStr::new(name), MAX_IGNORE_FILE) else {
                continue;
            };
            let dir = Path::new(GLOB_ROOT).join(rel);
            let mut builder = GitignoreBuilder::new(&dir);
            for line in String::from_utf8_lossy(&text).lines() {
                // A bad pattern is skipped, as git does.
                let _ = builder.add_line(Some(dir.join(name)), line);
            }
            if let Ok(rules) = builder.build() {
                ignores.push(rules);
                pushed += 1;
            }
        }
        pushed
    }

    /// Searches one regular file (`name` in directory `fd`).
    fn file(&mut self, fd: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), Stop> {
        let file = match open_at(fd, name, OFlags::NONBLOCK) {
            Ok(file) => file,
            Err(e) => {
                self.note(rel, e);
                return Ok(());
            }
        };
        match rfs::fstat(&file) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            // Swapped for something else since the listing.
            _ => return Ok(()),
        }
        self.result.files_searched += 1;
        let shown = rel.to_string_lossy().into_owned();
        let reader = BoundedRead {
            file: File::from(file),
            deadline: self.deadline,
        };
        let (query, limit) = (self.query, self.query.limit);
        let (mut file_hit, mut stop) = (false, None);
        let (hits, matches) = (&mut self.hits, &mut self.result.matches);
        let outcome = self.searcher.search_reader(
            &self.matcher,
            reader,
            UTF8(|line_number, line| {
                if query.files_only {
                    file_hit = true;
                    return Ok(false);
                }
                if *hits == limit {
                    stop = Some(Stop::Limit);
                    return Ok(false);
                }
                *hits += 1;
                matches.push(GrepMatch {
                    path: shown.clone(),
                    line: line_number,
                    text: cut(line.trim_end_matches(['\n', '\r'])),
                });
                Ok(true)
            }),
        );
        if let Err(e) = outcome {
            if Instant::now() >= self.deadline {
                stop = Some(Stop::Budget);
            } else {
                self.note_text(format!("{shown}: {e}"));
            }
        }
        if file_hit {
            if self.result.files.len() == limit {
                stop = Some(Stop::Limit);
            } else {
                self.result.files.push(shown);
            }
        }
        match stop {
            Some(why) => Err(self.stopped(why)),
            None => Ok(()),
        }
    }

    fn check_budget(&mut self) -> Result<(), Stop> {
        if Instant::now() >= self.deadline {
            return Err(self.stopped(Stop::Budget));
        }
        Ok(())
    }

    /// Records why the walk stops and returns the reason to unwind with.
    fn stopped(&mut self, why: Stop) -> Stop {
        self.result.truncated = true;
        self.result.truncated_reason = Some(match why {
            Stop::Limit => format!(
                "the limit of {} {} was reached",
                self.query.limit,
                if self.query.files_only {
                    "files"
                } else {
                    "matches"
                }
            ),
            Stop::Budget => format!(
                "the search stopped after its {} s time budget",
                TIME_BUDGET.as_secs()
            ),
        });
        why
    }

    fn note(&mut self, rel: &Path, e: Errno) {
        self.note_text(format!(
            "{}: {}",
            rel.display(),
            io::Error::from_raw_os_error(e.raw_os_error())
        ));
    }

    fn note_text(&mut self, text: String) {
        if self.result.errors.len() < 20 {
            self.result.errors.push(text);
        }
    }
}

/// Opens `name` in directory `dir` for reading, never through a symlink, never leaving `dir`.
fn open_at(dir: &OwnedFd, name: &OsStr, extra: OFlags) -> Result<OwnedFd, Errno> {
    rfs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
        Mode::empty(),
        WALK,
    )
}

/// The content of regular file `name` in `dir` if it has at most `limit` bytes.
fn read_small(dir: &OwnedFd, name: &OsStr, limit: u64) -> Option<Vec<u8>> {
    let fd = open_at(dir, name, OFlags::NONBLOCK).ok()?;
    let st = rfs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size as u64 > limit {
        return None;
    }
    let mut text = Vec::new();
    File::from(fd).take(limit).read_to_end(&mut text).ok()?;
    Some(text)
}

/// A file whose reads fail once the deadline has passed.
struct BoundedRead {
    file: File,
    deadline: Instant,
}

impl Read for BoundedRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "search time budget exceeded",
            ));
        }
        self.file.read(buf)
    }
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

    #[test]
    fn include_and_exclude_globs() {
        let q = |include, exclude| GrepQuery {
            pattern: "x",
            case_sensitive: false,
            include,
            exclude,
            limit: 1,
            files_only: false,
        };
        let o = overrides(&q(Some("*.rs"), Some("target"))).unwrap();
        let m = |p: &str, d| o.matched(Path::new(GLOB_ROOT).join(p), d).is_ignore();
        assert!(!m("src/main.rs", false));
        assert!(m("src/main.py", false));
        assert!(!m("src", true));
        assert!(m("target", true));
        let o = overrides(&q(Some("src/**"), None)).unwrap();
        let m = |p: &str, d| o.matched(Path::new(GLOB_ROOT).join(p), d).is_ignore();
        assert!(!m("src/a/b.txt", false));
        assert!(m("docs/src/b.txt", false));
        assert!(overrides(&q(Some("a[b"), None)).is_err());
    }
}
