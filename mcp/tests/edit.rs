//! Rules of the marker merge, the edit-file tool and search-replace.

#![forbid(unsafe_code)]

use std::time::Duration;

use sessionfs_mcp::{has_markers, is_marker, search_replace, AnchorKind, Budget, EditError};

/// A budget no test here comes near.
fn roomy() -> Budget {
    Budget::new(Duration::from_secs(600))
}

fn merge_edit(original: &str, edit: &str) -> Result<String, EditError> {
    sessionfs_mcp::merge_edit(original, edit, &roomy())
}

fn edit_file(
    path: &str,
    original: Option<&str>,
    content: &str,
    full_replace: bool,
) -> Result<sessionfs_mcp::EditOutcome, EditError> {
    sessionfs_mcp::edit_file(path, original, content, full_replace, &roomy())
}

const RUST: &str = "fn a() {\n    one();\n}\n\nfn b() {\n    two();\n}\n";

// ---------- markers ----------

#[test]
fn marker_forms() {
    for m in [
        "// ... existing code ...",
        "    // ... existing code ...   ",
        "# ... existing code ...",
        "-- ... existing code ...",
        "/* ... existing code ... */",
        "<!-- ... existing code ... -->",
        "{/* ... existing code ... */}",
        "; ... existing code ...",
        "% ... existing code ...",
        "// ... Existing Code ...",
        "//...existing   code...",
        "// … existing code …",
        "... existing code ...",
        "\t#   ...  EXISTING CODE  ...\r",
    ] {
        assert!(is_marker(m), "{m:?} should be a marker");
    }
    for not in [
        "// existing code",
        "// ... existing code",
        "// ... other code ...",
        "let x = \"... existing code ...\";",
        "// ... existing code ... here",
        "",
        "...",
    ] {
        assert!(!is_marker(not), "{not:?} should not be a marker");
    }
    assert!(has_markers("a\n# ... existing code ...\nb"));
    assert!(!has_markers("a\nb\n"));
}

// ---------- merge: placement ----------

#[test]
fn insert_between_two_anchors() {
    let edit =
        "// ... existing code ...\nfn b() {\n    zero();\n    two();\n// ... existing code ...\n";
    let out = merge_edit(RUST, edit).unwrap();
    assert_eq!(
        out,
        "fn a() {\n    one();\n}\n\nfn b() {\n    zero();\n    two();\n}\n"
    );
}

#[test]
fn replace_one_line_between_markers() {
    let edit = "// ... existing code ...\n    two();\n// ... existing code ...";
    // single-line segment: anchor is replaced by itself (no change)
    assert_eq!(merge_edit(RUST, edit).unwrap(), RUST);
    let edit = "// ... existing code ...\nfn a() {\n    uno();\n}\n// ... existing code ...\n";
    // end anchor `}` occurs twice after `fn a() {`: a()'s own `}` (line 3) replaces the least
    let out = merge_edit(RUST, edit).unwrap();
    assert_eq!(out, RUST.replace("one()", "uno()"));
}

#[test]
fn repeated_end_anchor_spanning_two_functions_takes_the_second() {
    let edit = "// ... existing code ...\nfn a() {\n    uno();\n}\n\nfn b() {\n    dos();\n}\n// ... existing code ...\n";
    let out = merge_edit(RUST, edit).unwrap();
    assert_eq!(
        out,
        RUST.replace("one()", "uno()").replace("two()", "dos()")
    );
}

#[test]
fn repeated_end_anchor_with_an_inserted_function_keeps_the_next_one() {
    let original = "fn a() {\n    1\n}\n\nfn b() {\n    2\n}\n\nfn c() {\n    3\n}\n";
    let edit = "// ... existing code ...\nfn b() {\n    2\n}\n\nfn inserted() {\n}\n// ... existing code ...\n";
    let out = merge_edit(original, edit).unwrap();
    assert_eq!(
        out,
        "fn a() {\n    1\n}\n\nfn b() {\n    2\n}\n\nfn inserted() {\n}\n\nfn c() {\n    3\n}\n"
    );
}

fn ambiguous_end(err: EditError, want: &[usize]) {
    assert!(
        matches!(
            err,
            EditError::AmbiguousAnchor { kind: AnchorKind::End, ref lines, .. } if lines == want
        ),
        "{err:?}"
    );
}

#[test]
fn repeated_end_anchor_needs_both_readings_to_agree() {
    let m = |orig: &str, seg: &str| {
        merge_edit(
            orig,
            &format!("// ... existing code ...\n{seg}// ... existing code ...\n"),
        )
    };
    // Covered lines: only `begin` → first `end`; scores: to line 3 → 2−1 = 1, to line 4 → 2−2 = 0.
    assert_eq!(
        m("begin\nx\nend\nend\n", "begin\ny\nz\nw\nend\n").unwrap(),
        "begin\ny\nz\nw\nend\nend\n"
    );
    // Covered: `r` (line 4) → the `end` at line 5; scores 3 (to line 3) and 5 (to line 5) agree.
    assert_eq!(
        m("s\nq\ne\nr\ne\n", "s\nq\ne\nr\nnew\ne\n").unwrap(),
        "s\nq\ne\nr\nnew\ne\n"
    );
    // Covered: `s` → line 3; scores 1 (to 3) and 0 (to 6).
    assert_eq!(
        m("s\nx\ne\ny\nz\ne\n", "s\ne\nk\ne\n").unwrap(),
        "s\ne\nk\ne\ny\nz\ne\n"
    );
    // Covered: `c` (line 5) → line 6; scores 1 (to 3) and 4−2 = 2 (to 6).
    assert_eq!(
        m("s\na\ne\nb\nc\ne\n", "s\nb\nc\nd\ne\n").unwrap(),
        "s\nb\nc\nd\ne\n"
    );
    // Covered: `begin` → line 2, but ending at line 3 keeps more (3 > 2): refused.
    ambiguous_end(
        m("begin\nend\nend\n", "begin\nend\nend\nend\n").unwrap_err(),
        &[2, 3],
    );
    // Covered: `b` (line 4) → line 5, but `s a e` scores 3 against 1: refused.
    ambiguous_end(m("s\na\ne\nb\ne\n", "s\nb\na\ne\n").unwrap_err(), &[3, 5]);
}

#[test]
fn a_segment_showing_one_function_and_rewriting_the_next_ends_at_the_next() {
    let original = "fn a() {\n    a1();\n    a2();\n    a3();\n    a4();\n}\n\nfn b() {\n    one();\n    two();\n}\n\nfn c() {\n    three();\n}\n";
    let edit = "// ... existing code ...\nfn a() {\n    a1();\n    a2();\n    a3();\n    a4();\n}\n\nfn b() {\n    TWO();\n    THREE();\n}\n// ... existing code ...\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        original.replace("    one();\n    two();", "    TWO();\n    THREE();")
    );
}

#[test]
fn a_new_line_equal_to_a_unique_line_far_below_does_not_swallow_the_code_between() {
    let original = "fn a() {\n    x();\n}\n\nmod m {\n    use std::io;\n    fn b() {\n        y();\n    }\n}\n";
    let edit = "// ... existing code ...\nfn a() {\n    use std::io;\n    x();\n}\n// ... existing code ...\n";
    ambiguous_end(merge_edit(original, edit).unwrap_err(), &[3, 10]);
}

#[test]
fn leading_marker_keeps_head_replaces_to_end() {
    let edit = "// ... existing code ...\nfn b() {\n    deux();\n}\n";
    let out = merge_edit(RUST, edit).unwrap();
    assert_eq!(out, "fn a() {\n    one();\n}\n\nfn b() {\n    deux();\n}\n");
}

#[test]
fn trailing_marker_keeps_tail_replaces_from_start() {
    let edit = "// header\nfn a() {\n    one();\n// ... existing code ...\n";
    let out = merge_edit(RUST, edit).unwrap();
    assert_eq!(
        out,
        "// header\nfn a() {\n    one();\n}\n\nfn b() {\n    two();\n}\n"
    );
}

#[test]
fn no_leading_marker_replaces_head_up_to_end_anchor() {
    let original = "old1\nold2\nkeep\nrest\n";
    let edit = "new\nkeep\n// ... existing code ...\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "new\nkeep\nrest\n");
}

#[test]
fn two_segments_keep_middle() {
    let original = "a\nb\nc\nd\ne\nf\ng\n";
    let edit = "# ... existing code ...\nb\nB2\nc\n# ... existing code ...\ne\nE2\nf\n# ... existing code ...\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        "a\nb\nB2\nc\nd\ne\nE2\nf\ng\n"
    );
}

#[test]
fn deletion_between_anchors() {
    let original = "a\nb\nc\nd\ne\n";
    let edit = "// ... existing code ...\nb\ne\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "a\nb\ne\n");
    let edit = "// ... existing code ...\nb\nd\n// ... existing code ...\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "a\nb\nd\ne\n");
}

#[test]
fn consecutive_markers_and_blank_segments() {
    let original = "a\nb\nc\n";
    let edit = "\n// ... existing code ...\n\n// ... existing code ...\nb\nB\n// ... existing code ...\n\n";
    // b is single non-blank?  no: segment is "b\nB" → end anchor "B" not in file
    let err = merge_edit(original, edit).unwrap_err();
    assert!(
        matches!(err, EditError::AnchorNotFound { segment: 1, kind: AnchorKind::End, ref anchor, edit_line: 6 } if anchor == "B"),
        "{err:?}"
    );
    let edit = "\n// ... existing code ...\n\n// ... existing code ...\nb\nB\nc\n// ... existing code ...\n\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "a\nb\nB\nc\n");
}

#[test]
fn blank_lines_next_to_markers_dropped_but_kept_at_edges() {
    let original = "x\ny\nz\n";
    let edit = "// ... existing code ...\n\ny\nY\nz\n\n";
    // no trailing marker: trailing blank line of the edit is kept, final newline follows the original
    assert_eq!(merge_edit(original, edit).unwrap(), "x\ny\nY\nz\n\n");
    let edit = "// ... existing code ...\n\ny\nY\nz\n\n// ... existing code ...\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "x\ny\nY\nz\n");
}

#[test]
fn trailing_whitespace_ignored_indentation_significant() {
    let original = "if x {\n    go();   \n}\n";
    let edit = "// ... existing code ...\n    go();\n    stop();\n}\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        "if x {\n    go();\n    stop();\n}\n"
    );
    let edit = "// ... existing code ...\ngo();\n// ... existing code ...\n";
    assert!(matches!(
        merge_edit(original, edit),
        Err(EditError::AnchorNotFound { .. })
    ));
}

#[test]
fn other_comment_leaders() {
    let py = "def f():\n    return 1\n\ndef g():\n    return 2\n";
    let edit = "# ... existing code ...\ndef g():\n    return 3\n";
    assert_eq!(
        merge_edit(py, edit).unwrap(),
        "def f():\n    return 1\n\ndef g():\n    return 3\n"
    );

    let html = "<html>\n<body>\n<p>hi</p>\n</body>\n</html>\n";
    let edit = "<!-- ... existing code ... -->\n<body>\n<h1>T</h1>\n<p>hi</p>\n<!-- ... existing code ... -->\n";
    assert_eq!(
        merge_edit(html, edit).unwrap(),
        "<html>\n<body>\n<h1>T</h1>\n<p>hi</p>\n</body>\n</html>\n"
    );

    let sql = "SELECT a\nFROM t\nWHERE x = 1;\n";
    let edit = "-- ... existing code ...\nWHERE x = 2;\n";
    // the start anchor must be a line of the file
    assert!(matches!(
        merge_edit(sql, edit),
        Err(EditError::AnchorNotFound { .. })
    ));
    let edit = "-- ... existing code ...\nFROM t\nWHERE x = 2;\n";
    assert_eq!(
        merge_edit(sql, edit).unwrap(),
        "SELECT a\nFROM t\nWHERE x = 2;\n"
    );

    let css = "a {\n  color: red;\n}\n";
    let edit = "/* ... existing code ... */\n  color: blue;\n/* ... Existing Code ... */\n";
    // `  color: blue;` is a one-line segment whose start anchor is not in the file
    assert!(matches!(
        merge_edit(css, edit),
        Err(EditError::AnchorNotFound {
            kind: AnchorKind::Start,
            ..
        })
    ));
    let edit = "/* ... existing code ... */\na {\n  color: blue;\n}\n";
    assert_eq!(merge_edit(css, edit).unwrap(), "a {\n  color: blue;\n}\n");
}

// ---------- merge: refusals ----------

#[test]
fn empty_edits_refused() {
    assert_eq!(merge_edit(RUST, ""), Err(EditError::EmptyEdit));
    assert_eq!(merge_edit(RUST, "  \n\n"), Err(EditError::EmptyEdit));
    assert_eq!(
        merge_edit(
            RUST,
            "// ... existing code ...\n\n# ... existing code ...\n"
        ),
        Err(EditError::EmptyEdit)
    );
    assert_eq!(merge_edit(RUST, "just text\n"), Err(EditError::NoMarkers));
}

#[test]
fn anchor_not_found_quotes_it() {
    let edit = "// ... existing code ...\nfn c() {\n}\n// ... existing code ...\n";
    let err = merge_edit(RUST, edit).unwrap_err();
    assert_eq!(
        err,
        EditError::AnchorNotFound {
            segment: 1,
            kind: AnchorKind::Start,
            anchor: "fn c() {".into(),
            edit_line: 2
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("segment 1") && msg.contains("\"fn c() {\"") && msg.contains("edit line 2"),
        "{msg}"
    );
}

#[test]
fn ambiguous_start_anchor_reports_lines() {
    let original = "x = 1\ny\nx = 1\ny\n";
    let edit = "// ... existing code ...\nx = 1\nz\ny\n// ... existing code ...\n";
    let err = merge_edit(original, edit).unwrap_err();
    assert_eq!(
        err,
        EditError::AmbiguousAnchor {
            segment: 1,
            kind: AnchorKind::Start,
            anchor: "x = 1".into(),
            edit_line: 2,
            count: 2,
            from_line: 1,
            lines: vec![1, 3],
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("2 times") && msg.contains("lines 1, 3"),
        "{msg}"
    );
}

#[test]
fn anchor_twice_but_once_after_previous_segment() {
    let original = "x = 1\nmid\nx = 1\nend\n";
    let edit = "// ... existing code ...\nmid\n// ... existing code ...\nx = 1\nx = 2\nend\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        "x = 1\nmid\nx = 1\nx = 2\nend\n"
    );
}

#[test]
fn out_of_order_segments_refused() {
    let original = "a\nb\nc\nd\n";
    let edit =
        "// ... existing code ...\nc\n// ... existing code ...\na\n// ... existing code ...\n";
    let err = merge_edit(original, edit).unwrap_err();
    assert_eq!(
        err,
        EditError::AnchorOutOfOrder {
            segment: 2,
            kind: AnchorKind::Start,
            anchor: "a".into(),
            edit_line: 4,
            from_line: 4,
            lines: vec![1],
        }
    );
    assert!(err.to_string().contains("out of order"));
}

#[test]
fn end_anchor_before_start_anchor_refused() {
    let original = "a\nb\nc\n";
    let edit = "// ... existing code ...\nc\nnew\na\n// ... existing code ...\n";
    assert!(matches!(
        merge_edit(original, edit),
        Err(EditError::AnchorOutOfOrder {
            segment: 1,
            kind: AnchorKind::End,
            ..
        })
    ));
}

// ---------- merge: line endings, unicode ----------

#[test]
fn crlf_file_keeps_crlf() {
    let original = "a\r\nb\r\nc\r\n";
    let edit = "// ... existing code ...\nb\nnew\nc\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        "a\r\nb\r\nnew\r\nc\r\n"
    );
    // an edit written with CRLF works too
    let edit = "// ... existing code ...\r\nb\r\nnew\r\n// ... existing code ...\r\n";
    let err = merge_edit(original, edit).unwrap_err();
    assert!(matches!(err, EditError::AnchorNotFound { ref anchor, .. } if anchor == "new"));
    let edit = "// ... existing code ...\r\na\r\nnew\r\nb\r\n// ... existing code ...\r\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        "a\r\nnew\r\nb\r\nc\r\n"
    );
}

#[test]
fn trailing_newline_preserved() {
    let original = "a\nb\nc";
    let edit = "// ... existing code ...\nb\nC\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "a\nb\nC");
    let original = "a\nb\nc\n";
    let edit = "// ... existing code ...\nb\nC";
    assert_eq!(merge_edit(original, edit).unwrap(), "a\nb\nC\n");
    // kept tail without newline stays without
    let original = "a\nb\nc";
    let edit = "A\na\n// ... existing code ...\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "A\na\nb\nc");
    let original = "a\r\nb\r\nc";
    let edit = "// ... existing code ...\nb\nC\n";
    assert_eq!(merge_edit(original, edit).unwrap(), "a\r\nb\r\nC");
}

#[test]
fn unicode_content() {
    let original = "// größe\nlet s = \"héllo 🌍\";\nlet t = \"日本語\";\n";
    let edit = "// ... existing code ...\nlet s = \"héllo 🌍\";\nlet u = \"ünï\";\nlet t = \"日本語\";\n// ... existing code ...\n";
    assert_eq!(
        merge_edit(original, edit).unwrap(),
        "// größe\nlet s = \"héllo 🌍\";\nlet u = \"ünï\";\nlet t = \"日本語\";\n"
    );
}

#[test]
fn empty_original_with_markers() {
    assert!(matches!(
        merge_edit("", "// ... existing code ...\nx\n"),
        Err(EditError::AnchorNotFound { .. })
    ));
}

// ---------- edit_file ----------

#[test]
fn new_file_written_as_is() {
    let out = edit_file("src/new.rs", None, "fn main() {}\n", false).unwrap();
    assert_eq!(out.new_content, "fn main() {}\n");
    assert!(
        out.diff.starts_with("--- /dev/null\n+++ b/src/new.rs\n"),
        "{}",
        out.diff
    );
    assert!(out.diff.contains("+fn main() {}"));
}

#[test]
fn new_file_with_markers_refused() {
    assert_eq!(
        edit_file("x.py", None, "# ... existing code ...\nprint(1)\n", false),
        Err(EditError::MarkersInNewFile)
    );
}

#[test]
fn existing_file_without_markers_needs_full_replace() {
    let err = edit_file("a.rs", Some(RUST), "fn z() {}\n", false).unwrap_err();
    assert_eq!(err, EditError::FullReplaceRequired);
    assert!(err.to_string().contains("fullReplace"));
    let out = edit_file("a.rs", Some(RUST), "fn z() {}\n", true).unwrap();
    assert_eq!(out.new_content, "fn z() {}\n");
    assert!(out.diff.starts_with("--- a/a.rs\n+++ b/a.rs\n"));
}

#[test]
fn existing_file_with_markers_merges_and_diffs() {
    let original: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    let edit = "// ... existing code ...\nline 10\ninserted\nline 11\n// ... existing code ...\n";
    let out = edit_file("f.txt", Some(&original), edit, false).unwrap();
    assert!(out.new_content.contains("line 10\ninserted\nline 11\n"));
    assert_eq!(
        out.diff,
        "--- a/f.txt\n+++ b/f.txt\n@@ -8,6 +8,7 @@\n line 8\n line 9\n line 10\n+inserted\n line 11\n line 12\n line 13\n"
    );
    // errors of the merge come through
    let bad = "// ... existing code ...\nnope\n";
    assert!(matches!(
        edit_file("f.txt", Some(&original), bad, true),
        Err(EditError::AnchorNotFound { .. })
    ));
}

#[test]
fn unchanged_edit_has_empty_diff() {
    let out = edit_file("a.rs", Some(RUST), RUST, true).unwrap();
    assert_eq!(out.new_content, RUST);
    assert_eq!(out.diff, "");
}

// ---------- search_replace ----------

#[test]
fn search_replace_single() {
    assert_eq!(
        search_replace("a b c", "b", "B", false).unwrap(),
        ("a B c".to_string(), 1)
    );
}

#[test]
fn search_replace_empty_refused() {
    assert_eq!(
        search_replace("abc", "", "x", false),
        Err(EditError::EmptySearch)
    );
    assert_eq!(
        search_replace("abc", "", "x", true),
        Err(EditError::EmptySearch)
    );
}

#[test]
fn search_replace_ambiguous_reports_lines() {
    let text = "foo\nbar\nfoo\nbaz foo\n";
    let err = search_replace(text, "foo", "x", false).unwrap_err();
    assert_eq!(
        err,
        EditError::AmbiguousSearch {
            count: 3,
            lines: vec![1, 3, 4]
        }
    );
    assert!(err.to_string().contains("3 times") && err.to_string().contains("lines 1, 3, 4"));
    assert_eq!(
        search_replace(text, "foo", "x", true).unwrap(),
        ("x\nbar\nx\nbaz x\n".to_string(), 3)
    );
}

#[test]
fn search_replace_not_found_quotes_truncated() {
    let err = search_replace("abc", "zzz", "x", false).unwrap_err();
    assert_eq!(
        err,
        EditError::SearchNotFound {
            search: "zzz".into()
        }
    );
    assert!(err.to_string().contains("\"zzz\""));
    let long = "é".repeat(300);
    match search_replace("abc", &long, "x", false) {
        Err(EditError::SearchNotFound { search }) => {
            assert_eq!(search.chars().count(), 201);
            assert!(search.ends_with('…'));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn search_replace_literal_dollar_and_regex_metachars() {
    let text = "let re = a.*b(c)?;\n";
    let (out, n) = search_replace(text, "a.*b(c)?", "$1 ${name} \\1 $$", false).unwrap();
    assert_eq!(n, 1);
    assert_eq!(out, "let re = $1 ${name} \\1 $$;\n");
    // metacharacters in the search do not act as a regex
    assert!(matches!(
        search_replace("axxb", "a.*b", "y", false),
        Err(EditError::SearchNotFound { .. })
    ));
    assert_eq!(search_replace("[x]+", "[x]+", "^$", false).unwrap().0, "^$");
}

#[test]
fn search_replace_non_overlapping() {
    assert_eq!(
        search_replace("aaaa", "aa", "b", true).unwrap(),
        ("bb".to_string(), 2)
    );
    assert!(matches!(search_replace("aaa", "aa", "b", false), Ok((ref s, 1)) if s == "ba"));
}

#[test]
fn search_replace_multiline_crlf() {
    let text = "one\r\ntwo\r\nthree\r\n";
    let (out, n) = search_replace(text, "one\ntwo\n", "1\n2\n", false).unwrap();
    assert_eq!(n, 1);
    assert_eq!(out, "1\r\n2\r\nthree\r\n");
    // an explicit CRLF search works as is
    assert_eq!(
        search_replace(text, "two\r\n", "", false).unwrap().0,
        "one\r\nthree\r\n"
    );
    // the error quotes the search as given
    assert_eq!(
        search_replace(text, "x\ny", "", false),
        Err(EditError::SearchNotFound {
            search: "x\ny".into()
        })
    );
}

#[test]
fn search_replace_unicode_and_trailing_newline() {
    let text = "größe 🌍\nend";
    assert_eq!(
        search_replace(text, "🌍", "🌎", false).unwrap().0,
        "größe 🌎\nend"
    );
    assert_eq!(
        search_replace(text, "end", "fin", false).unwrap().0,
        "größe 🌍\nfin"
    );
    assert_eq!(search_replace("a\n", "a", "b", false).unwrap().0, "b\n");
}

// ---------- bounds ----------

/// Counting the matches of an ambiguous search is one pass: 2 Mi matches in 4 MiB. (Counting each
/// match's line from the file start, as before, took 161 s on 1 MiB and would not finish here.)
#[test]
fn an_ambiguous_search_is_counted_in_one_pass() {
    let text = "a\n".repeat(2 << 20);
    let Err(EditError::AmbiguousSearch { count, lines }) = search_replace(&text, "a", "b", false)
    else {
        panic!("expected an ambiguous search");
    };
    assert_eq!(count, 2 << 20);
    assert_eq!(lines, (1..=21).collect::<Vec<_>>());
    let err = search_replace(&text, "a", "b", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("occurs 2097152 times (lines 1, 2, "), "{err}");
    assert!(err.contains("20, …)"), "{err}");
}

/// `replace_all` cannot turn 64 KiB into 256 MiB: the result's size is known before it is built.
#[test]
fn replace_all_cannot_grow_past_the_result_limit() {
    let text = "a".repeat(64 << 10);
    let replace = "b".repeat(4 << 10);
    assert_eq!(
        search_replace(&text, "a", &replace, true),
        Err(EditError::TooLarge {
            size: 256 << 20,
            limit: sessionfs_mcp::MAX_RESULT as u64,
        })
    );
    // Up to the limit it works.
    let (out, n) = search_replace(&text, "a", "bb", true).unwrap();
    assert_eq!((out.len(), n), (128 << 10, 64 << 10));
}

/// A merge whose work grows with segments × lines stops when its budget is spent, with an error
/// (here 100,000 one-line segments over a 100,000-line file, about 10¹⁰ comparisons).
#[test]
fn a_merge_stops_when_its_budget_is_spent() {
    let n = 100_000;
    let original: String = (0..n).map(|i| format!("line {i}\n")).collect();
    let edit: String = (0..n)
        .map(|i| format!("// ... existing code ...\nline {i}\n"))
        .collect::<String>()
        + "// ... existing code ...\n";
    let budget = Budget::new(Duration::from_millis(200));
    assert_eq!(
        sessionfs_mcp::merge_edit(&original, &edit, &budget),
        Err(EditError::TimedOut {
            limit: Duration::from_millis(200)
        })
    );
}

/// A cancelled request stops its merge at the next check.
#[test]
fn a_cancelled_merge_stops() {
    let budget = roomy();
    budget
        .cancel_flag()
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let edit = "// ... existing code ...\nfn b() {\n    zero();\n// ... existing code ...\n";
    assert_eq!(
        sessionfs_mcp::merge_edit(RUST, edit, &budget),
        Err(EditError::Cancelled)
    );
}

/// A merged result over the limit is refused before it is assembled.
#[test]
fn a_merge_cannot_grow_past_the_result_limit() {
    let original = "a\nb\n";
    let big = "x".repeat(sessionfs_mcp::MAX_RESULT);
    let edit = format!("// ... existing code ...\nb\n{big}\n");
    assert!(matches!(
        merge_edit(original, &edit),
        Err(EditError::TooLarge { size, .. }) if size as usize > sessionfs_mcp::MAX_RESULT
    ));
}
