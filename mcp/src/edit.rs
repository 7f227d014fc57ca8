//! Pure edit logic of `session_edit_file` and `session_search_replace`: no I/O, no model call, no guessing.
//!
//! # Marker merge ([`merge_edit`])
//!
//! An edit is text in which some lines are *markers*: a line whose content, once surrounding whitespace and an
//! optional comment leader (`//`, `#`, `--`, `;`, `%`, `/*`, `<!--`, `{/*`) and trailer (`*/`, `-->`, `*/}`)
//! are removed, reads `... existing code ...` (case-insensitive; the words may be separated by any
//! whitespace, and `…` counts as `...`). Examples of markers: `// ... existing code ...`,
//! `    # ... Existing Code ...`, `-- ... existing code ...`, `/* ... existing code ... */`,
//! `<!-- ... existing code ... -->`. A marker stands for "the original lines here, unchanged".
//!
//! The rules, applied line by line (a line is compared without its line ending and trailing whitespace;
//! indentation is significant):
//!
//! 1. Marker lines split the edit into *segments* of literal lines. Segments made only of blank lines are
//!    dropped (so consecutive markers act as one). An edit that is blank, or only markers and blank
//!    lines, is refused ([`EditError::EmptyEdit`]); an edit without any marker is refused by
//!    [`merge_edit`] ([`EditError::NoMarkers`]; [`edit_file`] decides what such content means).
//! 2. Segments are numbered from 1 in edit order. A segment's *start anchor* is its first non-blank line
//!    and its *end anchor* its last non-blank line (the same line when the segment has one non-blank line).
//! 3. Segments are placed in order; a cursor starts at the first line of the original and moves to the
//!    line after each placed segment.
//!    - If a marker precedes the segment, its start anchor must occur **exactly once** among the original's
//!      lines from the cursor to the end; the segment begins at that line. Without a preceding marker (only
//!      possible for the first segment) the segment begins at the first line of the file.
//!    - If a marker follows the segment, its end anchor must occur exactly once among the original's
//!      lines after the segment's start line (from the start line itself when the segment begins at the
//!      file start without an anchor); the segment ends after that line. A one-line segment with a
//!      preceding marker ends right after its start line. Without a following marker (only possible for
//!      the last segment) the segment extends to the end of the file.
//!    - The original lines from the segment's start to its end are replaced by the segment's lines. Blank
//!      lines of the segment next to a marker are dropped (they usually just frame the marker); blank lines
//!      at an edge of the edit without a marker are kept.
//! 4. Original lines not covered by a segment are kept verbatim: the head before the first segment (leading
//!    marker), the lines between segments (inner markers) and the tail after the last segment (trailing
//!    marker).
//! 5. An anchor with no occurrence after the cursor is refused: [`EditError::AnchorOutOfOrder`] if it does
//!    occur earlier in the file, [`EditError::AnchorNotFound`] otherwise. Several occurrences of a start
//!    anchor are refused with [`EditError::AmbiguousAnchor`], giving their count and line numbers. An end
//!    anchor is often a common line (`}`, `end`, `</div>`), so several occurrences are resolved, if
//!    two readings agree, to the first occurrence at or after every original line (from the segment's
//!    start) that equals a non-blank segment line occurring only once there: the segment visibly covers
//!    those lines. The second reading checks that choice: ending there must score at least as well as
//!    ending at any other occurrence, the score of a span being `kept − removed` (`kept`: lines of the
//!    original span in the longest common subsequence with the segment; `removed`: the span's other
//!    lines). Otherwise the edit is refused as ambiguous. So replacing a function body ends at that
//!    function's closing line; a segment showing one function and changing the next ends at the next
//!    one's; inserting a function after another ends at the first one's; and a new line that happens to
//!    equal a unique line far below cannot make the segment swallow everything in between.
//! 6. Line endings: the original's lines keep their endings; lines coming from the edit get the original's
//!    line ending (CRLF if the original contains `\r\n`, LF otherwise). When the output ends with lines from
//!    the edit, it ends with a newline exactly when the original does (for an empty original: when the edit
//!    does).
//!
//! Example, original:
//!
//! ```text
//! fn a() {
//!     one();
//! }
//!
//! fn b() {
//!     two();
//! }
//! ```
//!
//! Edit (inserts a line between two anchors, keeps the head and the tail):
//!
//! ```text
//! // ... existing code ...
//! fn b() {
//!     zero();
//!     two();
//! // ... existing code ...
//! ```
//!
//! `fn b() {` (start anchor) and `    two();` (end anchor) each occur once, so lines 5–6 are replaced by the
//! segment; lines 1–4 and 7 are kept. Without the leading marker the edit would instead replace lines 1–6
//! (the head up to the end anchor), and without the trailing marker lines 5–7 (from the start anchor to the
//! end of the file).
//!
//! # Tool rules ([`edit_file`])
//!
//! New file: the content is written as is; markers in a new file are refused. Existing file: content with
//! markers is merged by [`merge_edit`]; content without markers replaces the file only with `full_replace`,
//! and is refused otherwise. The outcome carries a unified diff (3 lines of context).
//!
//! # Search and replace ([`search_replace`])
//!
//! The search text is matched literally (no regex), non-overlapping, left to right. An empty search is
//! refused; no match is refused quoting the search (up to 200 characters); more than one match is refused
//! with the count and line numbers unless `replace_all`. The replacement is inserted literally (`$1`, `\n`
//! escapes and regex metacharacters mean nothing). In a CRLF file, a search (and its replacement) written
//! with bare `\n` line breaks is matched and inserted with `\r\n`.
//!
//! # Bounds
//!
//! Every entry point does work linear in its input, or is stopped by its [`Budget`]: the marker merge checks
//! the budget's deadline and cancellation flag between segments and bounds each scoring diff by the
//! deadline ([`EditError::TimedOut`], [`EditError::Cancelled`]); the unified diff is computed within the
//! deadline (past it, the diff is still correct but not minimal). No result may exceed [`MAX_RESULT`]
//! bytes ([`EditError::TooLarge`]), which is checked before the result is built, so `replace_all` cannot
//! amplify a small file into a large allocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use similar::TextDiff;

/// The largest content an edit may produce, in bytes (the largest file the session tools load).
pub const MAX_RESULT: usize = 16 << 20;

/// How long an edit may work and whether it is still wanted: a deadline and a cancellation flag (set by
/// the server when the MCP request is cancelled or its client goes away).
#[derive(Debug, Clone)]
pub struct Budget {
    limit: Duration,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
}

impl Budget {
    /// A budget of `limit` from now.
    pub fn new(limit: Duration) -> Budget {
        Budget {
            limit,
            deadline: Instant::now() + limit,
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag that cancels work under this budget when set.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fails once the budget is cancelled or spent.
    fn check(&self) -> Result<(), EditError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(EditError::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(EditError::TimedOut { limit: self.limit });
        }
        Ok(())
    }
}

/// Which anchor of a segment an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorKind {
    /// The segment's first non-blank line.
    Start,
    /// The segment's last non-blank line.
    End,
}

impl std::fmt::Display for AnchorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnchorKind::Start => "start anchor (first line)",
            AnchorKind::End => "end anchor (last line)",
        })
    }
}

/// Why an edit was refused. Line numbers are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The edit has no literal content (blank, or only markers and blank lines).
    #[error("the edit is empty: it has no lines besides blank lines and `... existing code ...` markers")]
    EmptyEdit,
    /// [`merge_edit`] was given content without any marker line.
    #[error(
        "the edit has no `// ... existing code ...` marker lines, so there is nothing to merge"
    )]
    NoMarkers,
    /// An anchor line does not occur in the original.
    #[error("segment {segment}: {kind} {anchor:?} (edit line {edit_line}) does not occur in the file; anchors must match a whole line of the file exactly (indentation included)")]
    AnchorNotFound {
        segment: usize,
        kind: AnchorKind,
        anchor: String,
        edit_line: usize,
    },
    /// An anchor line occurs more than once where it is searched.
    #[error("segment {segment}: {kind} {anchor:?} (edit line {edit_line}) is ambiguous: it occurs {count} times at or after line {from_line}, at lines {}; extend the segment so that its first and last lines are unique", fmt_lines(.lines))]
    AmbiguousAnchor {
        segment: usize,
        kind: AnchorKind,
        anchor: String,
        edit_line: usize,
        count: usize,
        from_line: usize,
        lines: Vec<usize>,
    },
    /// An anchor line occurs only before the place the previous segment (or start anchor) ended.
    #[error("segment {segment}: {kind} {anchor:?} (edit line {edit_line}) is out of order: it occurs only at lines {}, before line {from_line} where it must be searched (segments must follow the file's order)", fmt_lines(.lines))]
    AnchorOutOfOrder {
        segment: usize,
        kind: AnchorKind,
        anchor: String,
        edit_line: usize,
        from_line: usize,
        lines: Vec<usize>,
    },
    /// Markers in content for a file that does not exist.
    #[error("the file does not exist, so `... existing code ...` markers cannot refer to anything; send the whole content without markers")]
    MarkersInNewFile,
    /// Content without markers for an existing file, without `full_replace`.
    #[error("the file exists and the content has no `// ... existing code ...` markers: it would replace the whole file; set fullReplace to do that, or add markers around the changed lines")]
    FullReplaceRequired,
    /// Empty search text.
    #[error("the search text is empty")]
    EmptySearch,
    /// The search text does not occur.
    #[error("the search text was not found: {search:?}")]
    SearchNotFound {
        /// The search text, truncated to 200 characters.
        search: String,
    },
    /// The search text occurs more than once and `replace_all` is off.
    #[error("the search text occurs {count} times (lines {}); make it unique or set replace_all", fmt_lines_of(.lines, *.count))]
    AmbiguousSearch {
        count: usize,
        /// The lines of the first matches (at most 21).
        lines: Vec<usize>,
    },
    /// The result would be larger than [`MAX_RESULT`].
    #[error("the result would be {size} bytes, more than the {limit} bytes an edit may produce")]
    TooLarge { size: u64, limit: u64 },
    /// The edit's [`Budget`] ran out.
    #[error("the edit was stopped after {limit:?} without a result; make the anchors more distinctive or edit a smaller region")]
    TimedOut { limit: Duration },
    /// The request was cancelled while the edit was working.
    #[error("the request was cancelled")]
    Cancelled,
}

/// Result of [`edit_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditOutcome {
    /// The file's content after the edit.
    pub new_content: String,
    /// Unified diff from the old to the new content (`--- a/<path>`, `+++ b/<path>`, 3 lines of context;
    /// `--- /dev/null` for a new file). Empty when nothing changed.
    pub diff: String,
}

/// Line numbers shown in error messages.
const SHOWN_LINES: usize = 20;

/// Line numbers in error messages: at most 20, then an ellipsis.
fn fmt_lines(lines: &[usize]) -> String {
    fmt_lines_of(lines, lines.len())
}

/// The first line numbers of `total` occurrences: at most 20, then an ellipsis when there are more.
fn fmt_lines_of(lines: &[usize], total: usize) -> String {
    let mut s = lines
        .iter()
        .take(SHOWN_LINES)
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if total > SHOWN_LINES {
        s.push_str(", …");
    }
    s
}

const COMMENT_LEADERS: &[&str] = &["<!--", "{/*", "/*", "//", "--", "#", ";", "%"];
const COMMENT_TRAILERS: &[&str] = &["-->", "*/}", "*/"];

/// Whether `line` is an `... existing code ...` marker (see the module documentation).
pub fn is_marker(line: &str) -> bool {
    let mut s = line.trim();
    if let Some(rest) = COMMENT_LEADERS.iter().find_map(|p| s.strip_prefix(p)) {
        s = rest;
    }
    if let Some(rest) = COMMENT_TRAILERS.iter().find_map(|p| s.strip_suffix(p)) {
        s = rest;
    }
    let s = s.trim().replace('…', "...");
    let Some(inner) = s.strip_prefix("...").and_then(|r| r.strip_suffix("...")) else {
        return false;
    };
    let words: Vec<String> = inner.split_whitespace().map(str::to_lowercase).collect();
    words == ["existing", "code"]
}

/// Whether the text has at least one marker line.
pub fn has_markers(text: &str) -> bool {
    text.lines().any(is_marker)
}

/// A line compared for anchoring: without line ending and trailing whitespace.
fn key(line: &str) -> &str {
    line.trim_end()
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// One literal segment of the edit.
struct Segment<'a> {
    /// 1-based edit line number of each line.
    lines: Vec<(usize, &'a str)>,
    marker_before: bool,
    marker_after: bool,
}

/// Lines of the original with their endings.
fn split_keep_ends(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// Positions (0-based) of lines in `orig[from..]` equal to `anchor`.
fn find_anchor(orig: &[&str], from: usize, anchor: &str) -> Vec<usize> {
    let k = key(anchor);
    (from..orig.len()).filter(|&i| key(orig[i]) == k).collect()
}

/// Resolve an anchor to exactly one original line at or after `from`.
fn resolve(
    orig: &[&str],
    from: usize,
    segment: usize,
    kind: AnchorKind,
    (edit_line, anchor): (usize, &str),
) -> Result<usize, EditError> {
    let hits = find_anchor(orig, from, anchor);
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => {
            let before: Vec<usize> = find_anchor(&orig[..from.min(orig.len())], 0, anchor)
                .into_iter()
                .map(|i| i + 1)
                .collect();
            if before.is_empty() {
                Err(EditError::AnchorNotFound {
                    segment,
                    kind,
                    anchor: anchor.trim_end().to_string(),
                    edit_line,
                })
            } else {
                Err(EditError::AnchorOutOfOrder {
                    segment,
                    kind,
                    anchor: anchor.trim_end().to_string(),
                    edit_line,
                    from_line: from + 1,
                    lines: before,
                })
            }
        }
        many => Err(EditError::AmbiguousAnchor {
            segment,
            kind,
            anchor: anchor.trim_end().to_string(),
            edit_line,
            count: many.len(),
            from_line: from + 1,
            lines: many.iter().map(|i| i + 1).collect(),
        }),
    }
}

/// Resolves a segment's end anchor searched from `from`, for a segment placed from original line
/// `start`: the single occurrence, or among several the one two independent readings agree on (rule 5
/// of the module documentation); refused as ambiguous otherwise.
fn resolve_end(
    orig: &[&str],
    start: usize,
    from: usize,
    segment: usize,
    last: (usize, &str),
    segment_keys: &[&str],
    budget: &Budget,
) -> Result<usize, EditError> {
    let hits = find_anchor(orig, from, last.1);
    if hits.len() > 1 {
        if let Some(end) = first_end_after_unique_lines(orig, start, &hits, segment_keys) {
            if scores_best(orig, start, &hits, segment_keys, end, budget)? {
                return Ok(end);
            }
        }
    }
    resolve(orig, from, segment, AnchorKind::End, last)
}

/// The first occurrence in `ends` at or after every original line (from `start` on) that equals a
/// non-blank segment line occurring exactly once there: the segment visibly covers those lines.
fn first_end_after_unique_lines(
    orig: &[&str],
    start: usize,
    ends: &[usize],
    segment_keys: &[&str],
) -> Option<usize> {
    let mut seen: std::collections::HashMap<&str, (usize, usize)> =
        std::collections::HashMap::new();
    for (i, line) in orig.iter().enumerate().skip(start) {
        let entry = seen.entry(key(line)).or_insert((0, i));
        entry.0 += 1;
    }
    let floor = segment_keys
        .iter()
        .filter(|k| !k.trim().is_empty())
        .filter_map(|k| match seen.get(k) {
            Some(&(1, at)) => Some(at),
            _ => None,
        })
        .max()
        .unwrap_or(start);
    ends.iter().copied().find(|&e| e >= floor)
}

/// Segments longer than this are not disambiguated by scoring (refused instead), bounding the work.
const MAX_SCORED_SEGMENT: usize = 5000;

/// Whether ending the segment at `chosen` (one of `ends`, ascending) scores at least as well as ending
/// it at any other occurrence, the score of ending at `e` being `kept − removed` for the original span
/// `start..=e`: `kept` is the length of the longest common subsequence of the span and the segment,
/// `removed` the span's other lines. Spans only grow with `e` and the score's upper bound falls with
/// the span, so the search stops early. Each diff is bounded by the budget's deadline: a diff cut short
/// could misjudge a score, so running out is an error, not an answer.
fn scores_best(
    orig: &[&str],
    start: usize,
    ends: &[usize],
    segment_keys: &[&str],
    chosen: usize,
    budget: &Budget,
) -> Result<bool, EditError> {
    if segment_keys.len() > MAX_SCORED_SEGMENT {
        return Ok(false);
    }
    let seg_len = segment_keys.len() as i64;
    let mut best = i64::MIN;
    let mut chosen_score = None;
    for &e in ends {
        let span = (e + 1 - start) as i64;
        let bound = seg_len.min(span) - (span - seg_len).max(0);
        if bound < best && chosen_score.is_some() {
            break;
        }
        budget.check()?;
        let region: Vec<&str> = orig[start..=e].iter().map(|l| key(l)).collect();
        let kept: usize = similar::capture_diff_slices_deadline(
            similar::Algorithm::Myers,
            &region,
            segment_keys,
            Some(budget.deadline()),
        )
        .iter()
        .filter_map(|op| match op {
            similar::DiffOp::Equal { len, .. } => Some(*len),
            _ => None,
        })
        .sum();
        let kept = kept as i64;
        let score = kept - (span - kept);
        best = best.max(score);
        if e == chosen {
            chosen_score = Some(score);
        }
    }
    budget.check()?;
    Ok(chosen_score == Some(best))
}

/// Merge content with `// ... existing code ...` markers into `original`, following the rules in the module
/// documentation. Refuses (never guesses) when an anchor is missing, ambiguous or out of order, and stops
/// when `budget` runs out.
pub fn merge_edit(original: &str, edit: &str, budget: &Budget) -> Result<String, EditError> {
    if edit.trim().is_empty() {
        return Err(EditError::EmptyEdit);
    }
    let edit_lines: Vec<&str> = edit.lines().collect();
    if !edit_lines.iter().any(|l| is_marker(l)) {
        return Err(EditError::NoMarkers);
    }

    // Split into segments by marker lines; drop blank segments.
    let mut segments: Vec<Segment<'_>> = Vec::new();
    let mut current: Vec<(usize, &str)> = Vec::new();
    let mut marker_before = false;
    for (i, line) in edit_lines.iter().enumerate() {
        if is_marker(line) {
            if current.iter().any(|(_, l)| !is_blank(l)) {
                segments.push(Segment {
                    lines: std::mem::take(&mut current),
                    marker_before,
                    marker_after: true,
                });
            } else {
                current.clear();
            }
            marker_before = true;
        } else {
            current.push((i + 1, line));
        }
    }
    if current.iter().any(|(_, l)| !is_blank(l)) {
        segments.push(Segment {
            lines: current,
            marker_before,
            marker_after: false,
        });
    }
    if segments.is_empty() {
        return Err(EditError::EmptyEdit);
    }

    // Trim blank lines next to markers.
    for seg in &mut segments {
        if seg.marker_before {
            let skip = seg.lines.iter().take_while(|(_, l)| is_blank(l)).count();
            seg.lines.drain(..skip);
        }
        if seg.marker_after {
            while seg.lines.last().is_some_and(|(_, l)| is_blank(l)) {
                seg.lines.pop();
            }
        }
    }

    let orig = split_keep_ends(original);
    let eol = if original.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };

    // Place segments: (start, end) half-open ranges of original lines.
    let mut cursor = 0usize;
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(segments.len());
    for (idx, seg) in segments.iter().enumerate() {
        budget.check()?;
        let number = idx + 1;
        let non_blank: Vec<(usize, &str)> = seg
            .lines
            .iter()
            .copied()
            .filter(|(_, l)| !is_blank(l))
            .collect();
        let (first, last) = match (non_blank.first(), non_blank.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Err(EditError::EmptyEdit),
        };
        let start = if seg.marker_before {
            Some(resolve(&orig, cursor, number, AnchorKind::Start, first)?)
        } else {
            None
        };
        let end = if seg.marker_after {
            let keys: Vec<&str> = seg.lines.iter().map(|(_, l)| key(l)).collect();
            match start {
                Some(s) if non_blank.len() == 1 => s + 1,
                Some(s) => resolve_end(&orig, s, s + 1, number, last, &keys, budget)? + 1,
                None => resolve_end(&orig, 0, cursor, number, last, &keys, budget)? + 1,
            }
        } else {
            orig.len()
        };
        let start = start.unwrap_or(0);
        ranges.push((start, end));
        cursor = end;
    }

    // Assemble, once the size is known to be within bounds.
    let kept: usize = {
        let mut kept_from = 0;
        let mut kept = 0;
        for &(start, end) in &ranges {
            kept += orig[kept_from..start]
                .iter()
                .map(|l| l.len())
                .sum::<usize>();
            kept_from = end;
        }
        kept + orig[kept_from..].iter().map(|l| l.len()).sum::<usize>()
    };
    let added: usize = segments
        .iter()
        .flat_map(|seg| &seg.lines)
        .map(|(_, l)| l.len() + eol.len())
        .sum();
    within_result_limit(kept + added)?;
    let mut out = String::with_capacity(original.len() + edit.len());
    let mut kept_from = 0usize;
    let mut ends_with_edit = false;
    for (seg, &(start, end)) in segments.iter().zip(&ranges) {
        for line in &orig[kept_from..start] {
            out.push_str(line);
        }
        for (_, line) in &seg.lines {
            out.push_str(line);
            out.push_str(eol);
        }
        ends_with_edit = end == orig.len();
        kept_from = end;
    }
    for line in &orig[kept_from..] {
        out.push_str(line);
    }
    if ends_with_edit {
        let want_newline = if original.is_empty() {
            edit.ends_with('\n')
        } else {
            original.ends_with('\n')
        };
        if !want_newline {
            if let Some(stripped) = out.strip_suffix(eol) {
                out.truncate(stripped.len());
            }
        }
    }
    Ok(out)
}

/// Refuses a result of `size` bytes if it is over [`MAX_RESULT`].
fn within_result_limit(size: usize) -> Result<(), EditError> {
    if size > MAX_RESULT {
        return Err(EditError::TooLarge {
            size: size as u64,
            limit: MAX_RESULT as u64,
        });
    }
    Ok(())
}

/// Unified diff of `old` → `new` for `path` (3 lines of context); `old = None` diffs from `/dev/null`.
/// Empty when nothing changed. Computed within `budget`'s deadline: past it the diff is still a correct
/// diff, only not the smallest one.
pub fn unified_diff(path: &str, old: Option<&str>, new: &str, budget: &Budget) -> String {
    let old_header = if old.is_some() {
        format!("a/{path}")
    } else {
        "/dev/null".to_string()
    };
    let new_header = format!("b/{path}");
    TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .deadline(budget.deadline())
        .diff_lines(old.unwrap_or(""), new)
        .unified_diff()
        .context_radius(3)
        .header(&old_header, &new_header)
        .to_string()
}

/// Apply the `session_edit_file` rules to the file at `path` (used only for the diff headers):
/// `original = None` for a file that does not exist (content written as is; markers refused); an existing
/// file with content without markers needs `full_replace`; content with markers is merged by
/// [`merge_edit`] (whatever `full_replace` says).
pub fn edit_file(
    path: &str,
    original: Option<&str>,
    content: &str,
    full_replace: bool,
    budget: &Budget,
) -> Result<EditOutcome, EditError> {
    let new_content = match original {
        None if has_markers(content) => return Err(EditError::MarkersInNewFile),
        None => content.to_string(),
        Some(orig) if has_markers(content) => merge_edit(orig, content, budget)?,
        Some(_) if full_replace => content.to_string(),
        Some(_) => return Err(EditError::FullReplaceRequired),
    };
    within_result_limit(new_content.len())?;
    let diff = unified_diff(path, original, &new_content, budget);
    Ok(EditOutcome { new_content, diff })
}

/// Replace `search` with `replace`, both literal: exactly one match unless `replace_all`. Returns the new
/// text and the number of replacements. See the module documentation for the rules.
pub fn search_replace(
    original: &str,
    search: &str,
    replace: &str,
    replace_all: bool,
) -> Result<(String, usize), EditError> {
    if search.is_empty() {
        return Err(EditError::EmptySearch);
    }
    let crlf = original.contains("\r\n") && search.contains('\n') && !search.contains('\r');
    let (search_eff, replace_eff);
    let asked = search;
    let (search, replace) = if crlf {
        search_eff = search.replace('\n', "\r\n");
        replace_eff = if replace.contains('\r') {
            replace.to_string()
        } else {
            replace.replace('\n', "\r\n")
        };
        (search_eff.as_str(), replace_eff.as_str())
    } else {
        (search, replace)
    };
    // One pass: the number of matches and the lines of the first ones.
    let mut count = 0usize;
    let mut lines = Vec::new();
    let (mut line, mut counted_to) = (1usize, 0usize);
    for (at, _) in original.match_indices(search) {
        count += 1;
        if lines.len() <= SHOWN_LINES {
            line += original.as_bytes()[counted_to..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            counted_to = at;
            lines.push(line);
        }
    }
    if count == 1 || (count > 1 && replace_all) {
        // Matches do not overlap, so they cover at most the whole original.
        let size =
            (original.len() - count * search.len()) as u128 + count as u128 * replace.len() as u128;
        if size > MAX_RESULT as u128 {
            return Err(EditError::TooLarge {
                size: u64::try_from(size).unwrap_or(u64::MAX),
                limit: MAX_RESULT as u64,
            });
        }
    }
    match count {
        0 => {
            let shown: String = asked.chars().take(200).collect();
            let shown = if asked.chars().count() > 200 {
                format!("{shown}…")
            } else {
                shown
            };
            Err(EditError::SearchNotFound { search: shown })
        }
        1 => Ok((original.replacen(search, replace, 1), 1)),
        n if replace_all => Ok((original.replace(search, replace), n)),
        n => Err(EditError::AmbiguousSearch { count: n, lines }),
    }
}
