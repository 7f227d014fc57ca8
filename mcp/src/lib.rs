//! The sessionfs MCP server: session tools (`session_read_file`, `session_edit_file`, …) for agents that
//! speak MCP, backed by the bridge's mount, so agents get the same files through MCP as editors, git and
//! ripgrep get through `/sessions/<id>`.
//!
//! Layers, from the outside in:
//! - [`server`] (rmcp): tool names, parameter schemas and defaults, stdio transport; [`http`]: the
//!   streamable HTTP transport.
//! - [`tools`]: what each tool does and returns, on one session directory, independent of MCP;
//!   [`grep`] the workspace search; [`catalog`] what `session_list` reports.
//! - [`workspace`]: a session's directory in the mount with every path confined to it (`openat2`
//!   `RESOLVE_BENEATH`), atomic writes; [`error`] the tool errors agents see.
//! - [`edit`]: the I/O-free `// ... existing code ...` merge, literal search-replace and unified diffs.

#![forbid(unsafe_code)]

pub mod catalog;
pub mod edit;
pub mod error;
pub mod grep;
pub mod http;
pub mod server;
pub mod tools;
pub mod workspace;

pub use catalog::{SessionCatalog, SessionInfo};
pub use edit::{edit_file, merge_edit, search_replace, AnchorKind, EditError, EditOutcome};
pub use error::ToolError;
pub use http::serve_http;
pub use server::{serve_stdio, ServeError, SessionTools};
pub use workspace::Mount;
