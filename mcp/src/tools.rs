//! What each session tool does, independent of MCP: parameters in, a serializable result out, on a
//! [`SessionDir`]. [`crate::server`] maps these onto MCP tools; every function blocks.
//!
//! Result shapes follow the session tools agents already use (Minsky's): `success: true`, the `session`
//! and `path`, then the tool's own fields in camelCase.

use std::ops::Range;

use serde::Serialize;

use crate::edit::{self, Budget, EditError};
use crate::error::ToolError;
use crate::grep::{self, GrepMatch, GrepQuery};
use crate::workspace::{Kind, RelPath, SessionDir};

/// Largest file `session_read_file`, `session_edit_file` and `session_search_replace` load (16 MiB).
pub const MAX_TEXT_FILE: u64 = edit::MAX_RESULT as u64;
/// The longest diff a result carries, in bytes; a longer one is cut at a line with a note (the file
/// has the whole change).
pub const MAX_DIFF: usize = 256 << 10;
/// Lines shown when a read gives no end line (nor `should_read_entire_file`).
pub const DEFAULT_READ_LINES: usize = 2000;
/// Bytes inspected for a NUL to call a file binary (as git and ripgrep do).
const BINARY_PROBE: usize = 8192;

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LineRange {
    pub start: usize,
    pub end: usize,
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Omitted {
    /// Which lines were left out, e.g. "Lines 1-9 and 41-300 of 300 are not shown".
    pub summary: String,
}

/// `session_read_file`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ReadResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    /// The lines shown (UTF-8 text), or empty for a binary file.
    pub content: String,
    /// Lines in the file (a final line terminator does not start another line).
    pub total_lines: usize,
    /// The lines shown, e.g. "10-40" ("0" for an empty file).
    pub lines_shown: String,
    /// The range shown, 1-based inclusive; absent for an empty or binary file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines_read: Option<LineRange>,
    /// Present when some lines are not shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted_content: Option<Omitted>,
    /// File size in bytes.
    pub size: u64,
    /// False for binary or non-UTF-8 files: then `content` is empty and `fileType` says what it is.
    pub is_text: bool,
    /// For a file that is not text: what it is, e.g. "image/png (png)", "binary data", "non-UTF-8 text".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
}

/// How `session_read_file` chooses lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadRange {
    pub start: Option<usize>,
    pub end: Option<usize>,
    pub entire: bool,
}

pub fn read_file(dir: &SessionDir, path: &str, range: ReadRange) -> Result<ReadResult, ToolError> {
    let rel = dir.relative(path)?;
    let bytes = dir.read_all(&rel, MAX_TEXT_FILE)?;
    let size = bytes.len() as u64;
    let base = |content: String, total_lines, lines_shown: String| ReadResult {
        success: true,
        session: dir.id().to_owned(),
        path: rel.display(),
        content,
        total_lines,
        lines_shown,
        lines_read: None,
        omitted_content: None,
        size,
        is_text: true,
        file_type: None,
    };
    let text = match classify(&bytes) {
        Ok(text) => text,
        Err(file_type) => {
            return Ok(ReadResult {
                is_text: false,
                file_type: Some(file_type),
                ..base(String::new(), 0, "0".into())
            })
        }
    };
    let lines = line_spans(text);
    let total = lines.len();
    if total == 0 {
        return Ok(base(String::new(), 0, "0".into()));
    }
    let (start, end) = window(range, total)?;
    let content = text[lines[start - 1].start..lines[end - 1].end].to_owned();
    let mut result = base(
        content,
        total,
        if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        },
    );
    result.lines_read = Some(LineRange { start, end });
    result.omitted_content = omitted(start, end, total).map(|summary| Omitted { summary });
    Ok(result)
}

/// The 1-based inclusive line window for `range` over a file of `total` (> 0) lines.
fn window(range: ReadRange, total: usize) -> Result<(usize, usize), ToolError> {
    if range.entire {
        return Ok((1, total));
    }
    if range.start == Some(0) || range.end == Some(0) {
        return Err(ToolError::InvalidArgument {
            message: "line numbers are 1-based (the first line is 1)".into(),
        });
    }
    let start = range.start.unwrap_or(1);
    if start > total {
        return Err(ToolError::InvalidArgument {
            message: format!(
                "start_line_one_indexed {start} is past the end of the file ({total} lines)"
            ),
        });
    }
    let end = match range.end {
        Some(end) if end < start => {
            return Err(ToolError::InvalidArgument {
                message: format!(
                    "end_line_one_indexed_inclusive {end} is before start_line_one_indexed {start}"
                ),
            })
        }
        Some(end) => end.min(total),
        None => (start + DEFAULT_READ_LINES - 1).min(total),
    };
    Ok((start, end))
}

fn omitted(start: usize, end: usize, total: usize) -> Option<String> {
    let mut parts = Vec::new();
    if start > 1 {
        parts.push(span(1, start - 1));
    }
    if end < total {
        parts.push(span(end + 1, total));
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "Lines {} of {total} are not shown; read them with start_line_one_indexed/end_line_one_indexed_inclusive",
        parts.join(" and ")
    ))
}

fn span(a: usize, b: usize) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Byte ranges of the lines of `text`, each including its line terminator.
fn line_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'\n' {
            spans.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < text.len() {
        spans.push(start..text.len());
    }
    spans
}

/// The text of `bytes`, or what the file is when it is not UTF-8 text.
fn classify(bytes: &[u8]) -> Result<&str, String> {
    let probe = &bytes[..bytes.len().min(BINARY_PROBE)];
    let binary = probe.contains(&0);
    if !binary {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return Ok(text);
        }
    }
    Err(match infer::get(bytes) {
        Some(t) => format!("{} ({})", t.mime_type(), t.extension()),
        None if binary => "binary data".into(),
        None => "non-UTF-8 text".into(),
    })
}

/// A file's text for the editing tools (`None` if it does not exist): UTF-8 without NUL bytes.
fn load_text(dir: &SessionDir, rel: &RelPath) -> Result<Option<String>, ToolError> {
    let Some(bytes) = dir.try_read_all(rel, MAX_TEXT_FILE)? else {
        return Ok(None);
    };
    let not_text = |what| ToolError::NotText {
        path: rel.display(),
        what,
    };
    let text = classify(&bytes).map_err(not_text)?;
    if text.contains('\0') {
        return Err(not_text("it contains NUL bytes".into()));
    }
    Ok(Some(text.to_owned()))
}

/// Refuses to write when the file changed since it was read (another writer in between): the edit was
/// computed from content that is no longer there. The file is read again (an open through the mount
/// fetches it from the daemon), so a change made inside the container is seen even while the mount's
/// attribute cache still shows the old size and time. A writer between this check and the rename can
/// still be overwritten; that window is one rename round trip.
fn check_unchanged(dir: &SessionDir, rel: &RelPath, read: Option<&str>) -> Result<(), ToolError> {
    let now = dir.try_read_all(rel, MAX_TEXT_FILE)?;
    if now.as_deref() != read.map(str::as_bytes) {
        return Err(ToolError::Changed {
            path: rel.display(),
        });
    }
    Ok(())
}

/// `session_write_file`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    /// Bytes written (UTF-8).
    pub bytes_written: usize,
    /// Whether the file did not exist before.
    pub created: bool,
}

pub fn write_file(
    dir: &SessionDir,
    path: &str,
    content: &str,
    create_dirs: bool,
) -> Result<WriteResult, ToolError> {
    let rel = dir.relative(path)?;
    let created = dir.write_atomic(&rel, content.as_bytes(), create_dirs)?;
    Ok(WriteResult {
        success: true,
        session: dir.id().to_owned(),
        path: rel.display(),
        bytes_written: content.len(),
        created,
    })
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DiffSummary {
    pub lines_added: usize,
    pub lines_removed: usize,
    /// Lines in the file after the edit.
    pub total_lines: usize,
}

/// `session_edit_file`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EditResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    /// Whether an existing file was changed (or, with dryRun, would be).
    pub edited: bool,
    /// Whether the file did not exist (and was, or with dryRun would be, created).
    pub created: bool,
    pub dry_run: bool,
    /// Bytes of the new content (written unless dryRun).
    pub bytes_written: usize,
    /// Unified diff of the change (empty when nothing changes).
    pub diff: String,
    pub diff_summary: DiffSummary,
    /// With dryRun: the content the file would have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposed_content: Option<String>,
}

pub struct EditRequest<'a> {
    pub path: &'a str,
    pub content: &'a str,
    pub full_replace: bool,
    pub dry_run: bool,
    pub create_dirs: bool,
}

pub fn edit_file(
    dir: &SessionDir,
    req: &EditRequest<'_>,
    budget: &Budget,
) -> Result<EditResult, ToolError> {
    let rel = dir.relative(req.path)?;
    let shown = rel.display();
    let current = load_text(dir, &rel)?;
    let original = current.as_deref();
    let outcome = edit::edit_file(&shown, original, req.content, req.full_replace, budget)
        .map_err(|source| ToolError::Edit {
            path: shown.clone(),
            source,
        })?;
    let changed = original != Some(outcome.new_content.as_str());
    if !req.dry_run && changed {
        check_unchanged(dir, &rel, original)?;
        dir.write_atomic(&rel, outcome.new_content.as_bytes(), req.create_dirs)?;
    }
    let diff_summary = summarize(&outcome.diff, &outcome.new_content);
    Ok(EditResult {
        success: true,
        session: dir.id().to_owned(),
        path: shown,
        edited: original.is_some() && changed,
        created: original.is_none(),
        dry_run: req.dry_run,
        bytes_written: outcome.new_content.len(),
        diff: bounded_diff(outcome.diff),
        diff_summary,
        proposed_content: req.dry_run.then_some(outcome.new_content),
    })
}

/// `diff`, cut after the last whole line within [`MAX_DIFF`] bytes, with a note saying so.
fn bounded_diff(mut diff: String) -> String {
    if diff.len() <= MAX_DIFF {
        return diff;
    }
    let total = diff.len();
    let cut = diff.as_bytes()[..MAX_DIFF]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    diff.truncate(cut);
    diff.push_str(&format!(
        "\\ diff cut here: {} of its {total} bytes are left out (the file has the whole change)\n",
        total - cut
    ));
    diff
}

fn summarize(diff: &str, new_content: &str) -> DiffSummary {
    let mut s = DiffSummary {
        lines_added: 0,
        lines_removed: 0,
        total_lines: line_spans(new_content).len(),
    };
    for line in diff.lines() {
        if line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        if line.starts_with('+') {
            s.lines_added += 1;
        } else if line.starts_with('-') {
            s.lines_removed += 1;
        }
    }
    s
}

/// `session_search_replace`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SearchReplaceResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    pub edited: bool,
    pub replaced: bool,
    pub replacement_count: usize,
    /// Unified diff of the change.
    pub diff: String,
}

pub fn search_replace(
    dir: &SessionDir,
    path: &str,
    search: &str,
    replace: &str,
    replace_all: bool,
    budget: &Budget,
) -> Result<SearchReplaceResult, ToolError> {
    let rel = dir.relative(path)?;
    let shown = rel.display();
    if search.is_empty() {
        return Err(ToolError::Edit {
            path: shown,
            source: EditError::EmptySearch,
        });
    }
    let Some(original) = load_text(dir, &rel)? else {
        return Err(ToolError::NotFound { path: shown });
    };
    let (new_content, count) = edit::search_replace(&original, search, replace, replace_all)
        .map_err(|source| ToolError::Edit {
            path: shown.clone(),
            source,
        })?;
    let changed = new_content != original;
    if changed {
        check_unchanged(dir, &rel, Some(&original))?;
        dir.write_atomic(&rel, new_content.as_bytes(), false)?;
    }
    Ok(SearchReplaceResult {
        success: true,
        session: dir.id().to_owned(),
        diff: bounded_diff(edit::unified_diff(
            &shown,
            Some(&original),
            &new_content,
            budget,
        )),
        path: shown,
        edited: changed,
        replaced: true,
        replacement_count: count,
    })
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DirEntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub size: u64,
}

/// `session_list_directory`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ListResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    /// Names of the entries that are not directories (files, symlinks, others), sorted.
    pub files: Vec<String>,
    /// Names of the subdirectories, sorted.
    pub directories: Vec<String>,
    pub total_entries: usize,
    /// Every entry with its type and size.
    pub entries: Vec<DirEntryInfo>,
    /// Whether the directory has more entries than the 10,000 listed.
    pub truncated: bool,
}

pub fn list_directory(
    dir: &SessionDir,
    path: &str,
    show_hidden: bool,
) -> Result<ListResult, ToolError> {
    let rel = dir.relative(path)?;
    let mut result = ListResult {
        success: true,
        session: dir.id().to_owned(),
        path: rel.display(),
        files: Vec::new(),
        directories: Vec::new(),
        total_entries: 0,
        entries: Vec::new(),
        truncated: false,
    };
    let (entries, truncated) = dir.list_dir(&rel)?;
    result.truncated = truncated;
    for entry in entries {
        if !show_hidden && entry.name.starts_with('.') {
            continue;
        }
        if entry.kind == Kind::Directory {
            result.directories.push(entry.name.clone());
        } else {
            result.files.push(entry.name.clone());
        }
        result.entries.push(DirEntryInfo {
            name: entry.name,
            kind: entry.kind,
            size: entry.size,
        });
    }
    result.total_entries = result.entries.len();
    Ok(result)
}

/// `session_file_exists`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ExistsResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    pub exists: bool,
    pub is_file: bool,
    pub is_directory: bool,
    /// Whether the path itself is a symlink (followed for the other fields, inside the workspace).
    pub is_symlink: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

pub fn file_exists(dir: &SessionDir, path: &str) -> Result<ExistsResult, ToolError> {
    let rel = dir.relative(path)?;
    let link = dir.try_stat(&rel, false)?;
    let is_symlink = link
        .as_ref()
        .is_some_and(|st| Kind::of(st) == Kind::Symlink);
    // A symlink is followed (refused if it leads out); a dangling one does not exist.
    let target = if is_symlink {
        dir.try_stat(&rel, true)?
    } else {
        link
    };
    let kind = target.as_ref().map(Kind::of);
    Ok(ExistsResult {
        success: true,
        session: dir.id().to_owned(),
        path: rel.display(),
        exists: target.is_some(),
        is_file: kind == Some(Kind::File),
        is_directory: kind == Some(Kind::Directory),
        is_symlink,
        size: target.map(|st| st.st_size as u64),
    })
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    pub deleted: bool,
}

pub fn delete_file(dir: &SessionDir, path: &str) -> Result<DeleteResult, ToolError> {
    let rel = dir.relative(path)?;
    dir.delete_file(&rel)?;
    Ok(DeleteResult {
        success: true,
        session: dir.id().to_owned(),
        path: rel.display(),
        deleted: true,
    })
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CreateDirResult {
    pub success: bool,
    pub session: String,
    pub path: String,
    /// Whether a directory was created (false: it existed already, with recursive).
    pub created: bool,
    pub recursive: bool,
}

pub fn create_directory(
    dir: &SessionDir,
    path: &str,
    recursive: bool,
) -> Result<CreateDirResult, ToolError> {
    let rel = dir.relative(path)?;
    if rel.is_root() {
        return Err(ToolError::AlreadyExists {
            path: rel.display(),
        });
    }
    let created = dir.create_dir(&rel, recursive)?;
    Ok(CreateDirResult {
        success: true,
        session: dir.id().to_owned(),
        path: rel.display(),
        created,
        recursive,
    })
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct MoveResult {
    pub success: bool,
    pub session: String,
    /// The new path.
    pub path: String,
    pub source_path: String,
    pub target_path: String,
    pub moved: bool,
    /// Whether an existing target was replaced.
    pub overwritten: bool,
}

pub fn move_file(
    dir: &SessionDir,
    source: &str,
    target: &str,
    overwrite: bool,
    create_dirs: bool,
) -> Result<MoveResult, ToolError> {
    let from = dir.relative(source)?;
    let to = dir.relative(target)?;
    if from.is_root() {
        return Err(ToolError::InvalidArgument {
            message: "the workspace root cannot be moved".into(),
        });
    }
    let overwritten = overwrite && dir.try_stat(&to, false)?.is_some();
    dir.rename(&from, &to, overwrite, create_dirs)?;
    Ok(MoveResult {
        success: true,
        session: dir.id().to_owned(),
        path: to.display(),
        source_path: from.display(),
        target_path: to.display(),
        moved: true,
        overwritten,
    })
}

#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RenameResult {
    pub success: bool,
    pub session: String,
    /// The new path.
    pub path: String,
    pub original_path: String,
    pub new_path: String,
    pub new_name: String,
    pub renamed: bool,
    pub overwritten: bool,
}

pub fn rename_file(
    dir: &SessionDir,
    path: &str,
    new_name: &str,
    overwrite: bool,
) -> Result<RenameResult, ToolError> {
    if new_name.is_empty() || new_name == "." || new_name == ".." || new_name.contains(['/', '\0'])
    {
        return Err(ToolError::InvalidArgument {
            message: format!(
                "newName {new_name:?} must be a plain file name (no '/'); use session_move_file to move"
            ),
        });
    }
    let from = dir.relative(path)?;
    let Some((parent, _)) = from.split() else {
        return Err(ToolError::InvalidArgument {
            message: "the workspace root cannot be renamed".into(),
        });
    };
    let to = parent.join(std::ffi::OsStr::new(new_name));
    let overwritten = overwrite && dir.try_stat(&to, false)?.is_some();
    dir.rename(&from, &to, overwrite, false)?;
    Ok(RenameResult {
        success: true,
        session: dir.id().to_owned(),
        path: to.display(),
        original_path: from.display(),
        new_path: to.display(),
        new_name: new_name.to_owned(),
        renamed: true,
        overwritten,
    })
}

/// `session_grep_search`'s result.
#[derive(Serialize, schemars::JsonSchema, Debug)]
#[serde(rename_all = "camelCase")]
pub struct GrepResult {
    pub success: bool,
    pub session: String,
    pub query: String,
    /// The matches as text, grouped by file: `File: <path>` then `Line <n>: <text>` lines (with
    /// files_only, one path per line); "No matches found." when there are none.
    pub results: String,
    /// Matching lines (empty with files_only).
    pub matches: Vec<GrepMatch>,
    /// Matching files (with files_only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Matches (or files, with files_only) returned.
    pub match_count: usize,
    pub files_searched: usize,
    /// Whether there may be more matches than returned.
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_reason: Option<String>,
    /// Files that could not be searched, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

pub fn grep_search(dir: &SessionDir, query: &GrepQuery<'_>) -> Result<GrepResult, ToolError> {
    let found = grep::grep(dir, query)?;
    let mut results = String::new();
    if query.files_only {
        for f in &found.files {
            results.push_str(f);
            results.push('\n');
        }
    } else {
        let mut last: Option<&str> = None;
        for m in &found.matches {
            if last != Some(m.path.as_str()) {
                if last.is_some() {
                    results.push('\n');
                }
                results.push_str(&format!("File: {}\n", m.path));
                last = Some(&m.path);
            }
            results.push_str(&format!("Line {}: {}\n", m.line, m.text));
        }
    }
    if results.is_empty() {
        results.push_str("No matches found.");
    }
    if found.truncated {
        results.push_str(&format!(
            "\nNOTE: more results exist: {}.",
            found.truncated_reason.as_deref().unwrap_or("truncated")
        ));
    }
    Ok(GrepResult {
        success: true,
        session: dir.id().to_owned(),
        query: query.pattern.to_owned(),
        results,
        match_count: if query.files_only {
            found.files.len()
        } else {
            found.matches.len()
        },
        matches: found.matches,
        files: found.files,
        files_searched: found.files_searched,
        truncated: found.truncated,
        truncated_reason: found.truncated_reason,
        errors: found.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: Option<usize>, end: Option<usize>) -> ReadRange {
        ReadRange {
            start,
            end,
            entire: false,
        }
    }

    #[test]
    fn windows() {
        assert_eq!(window(range(None, None), 10).unwrap(), (1, 10));
        assert_eq!(window(range(Some(3), Some(5)), 10).unwrap(), (3, 5));
        assert_eq!(window(range(Some(3), Some(50)), 10).unwrap(), (3, 10));
        assert_eq!(window(range(None, Some(4)), 10).unwrap(), (1, 4));
        assert_eq!(
            window(range(Some(2), None), 5000).unwrap(),
            (2, DEFAULT_READ_LINES + 1)
        );
        assert_eq!(
            window(range(None, None), 5000).unwrap(),
            (1, DEFAULT_READ_LINES)
        );
        let entire = ReadRange {
            entire: true,
            ..range(Some(7), Some(8))
        };
        assert_eq!(window(entire, 5000).unwrap(), (1, 5000));
        assert!(window(range(Some(11), None), 10).is_err());
        assert!(window(range(Some(5), Some(4)), 10).is_err());
        assert!(window(range(Some(0), None), 10).is_err());
    }

    #[test]
    fn omitted_summaries() {
        assert_eq!(omitted(1, 10, 10), None);
        assert_eq!(
            omitted(3, 5, 10).unwrap(),
            "Lines 1-2 and 6-10 of 10 are not shown; read them with start_line_one_indexed/end_line_one_indexed_inclusive"
        );
        assert!(omitted(1, 9, 10).unwrap().starts_with("Lines 10 of 10"));
    }

    #[test]
    fn long_diffs_are_cut_at_a_line_with_a_note() {
        let line = "+".to_string() + &"x".repeat(99) + "\n";
        let diff = line.repeat(MAX_DIFF / 100 + 10);
        let cut = bounded_diff(diff.clone());
        let (kept, note) = cut.rsplit_once("\\ diff cut here: ").unwrap();
        assert!(kept.len() <= MAX_DIFF && kept.len() > MAX_DIFF - 100);
        assert!(kept.ends_with('\n') && diff.starts_with(kept));
        assert!(note.starts_with(&format!(
            "{} of its {} bytes",
            diff.len() - kept.len(),
            diff.len()
        )));
        assert_eq!(bounded_diff(line.clone()), line);
    }

    #[test]
    fn line_spans_keep_terminators() {
        let t = "a\nbb\r\nc";
        let s = line_spans(t);
        assert_eq!(s.len(), 3);
        assert_eq!(&t[s[1].clone()], "bb\r\n");
        assert_eq!(&t[s[2].clone()], "c");
        assert_eq!(line_spans("x\n").len(), 1);
        assert_eq!(line_spans("").len(), 0);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(b"hello\n"), Ok("hello\n"));
        assert_eq!(
            classify(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap_err(),
            "image/png (png)"
        );
        assert_eq!(classify(b"ab\0cd").unwrap_err(), "binary data");
        assert_eq!(classify(b"caf\xe9\n").unwrap_err(), "non-UTF-8 text");
    }

    #[test]
    fn diff_summary_counts_changed_lines() {
        let budget = Budget::new(std::time::Duration::from_secs(60));
        let d = edit::unified_diff("f", Some("a\nb\nc\n"), "a\nB\nc\nd\n", &budget);
        let s = summarize(&d, "a\nB\nc\nd\n");
        assert_eq!((s.lines_added, s.lines_removed, s.total_lines), (2, 1, 4));
    }
}
