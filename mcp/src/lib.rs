//! The sessionfs MCP server: session tools (`session_read_file`, `session_edit_file`, …) for agents that
//! speak MCP, backed by the bridge's mount, so agents get the same files through MCP as editors, git and
//! ripgrep get through `/sessions/<id>`.
//!
//! Layers, from the outside in:
//! - `server.rs` (rmcp): tool names, parameter schemas and defaults, the call slots and edit budgets;
//!   `stdio.rs`: the stdio transport's front (a size bound that answers); `http.rs`: the streamable
//!   HTTP transport.
//! - `tools.rs`: what each tool does and returns, on one session directory, independent of MCP;
//!   `grep.rs` the workspace search; `catalog.rs` what `session_list` reports.
//! - `workspace.rs`: a session's directory in the mount with every path confined to it (`openat2`
//!   `RESOLVE_BENEATH`), atomic writes; `error.rs` the tool errors agents see.
//! - `edit.rs`: the I/O-free `// ... existing code ...` merge, literal search-replace and unified diffs.

#![forbid(unsafe_code)]

mod catalog;
mod edit;
mod error;
mod grep;
mod http;
mod server;
mod stdio;
mod tools;
mod workspace;

pub use catalog::{SessionCatalog, SessionInfo};
pub use edit::{
    edit_file, has_markers, is_marker, merge_edit, search_replace, AnchorKind, Budget, EditError,
    EditOutcome, MAX_RESULT,
};
pub use error::ToolError;
pub use http::{serve_http, serve_unix};
pub use server::{serve_stdio, ServeError, SessionTools, EDIT_TIME_LIMIT, MAX_CALLS};
pub use stdio::{IdScanner, MAX_MESSAGE};
pub use workspace::{normalize_path, Mount};
