//! The sessionfs MCP server (issue 4): session tools for agents that speak MCP.
//!
//! The server itself (rmcp, stdio and streamable HTTP, tools routed through the mount) is not here yet.
//! Today the crate holds the pure, I/O-free logic behind `session_edit_file` and `session_search_replace`
//! in [`edit`]: the deterministic `// ... existing code ...` merge, literal search-replace, and unified
//! diffs. Nothing in this crate touches files; callers read and write.

pub mod edit;

pub use edit::{edit_file, merge_edit, search_replace, AnchorKind, EditError, EditOutcome};
