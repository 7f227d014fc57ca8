//! The MCP side: the session tools as rmcp tools (names, parameters, schemas, defaults), served over stdio
//! or streamable HTTP. Each call validates its parameters, runs the tool from [`crate::tools`] on the
//! blocking pool, and answers with the result as structured content, or with a tool error (`isError`)
//! carrying the [`ToolError`] message.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{tool, tool_handler, tool_router, Json, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::catalog::{ListedSession, SessionCatalog, SessionListResult};
use crate::edit::Budget;
use crate::error::ToolError;
use crate::grep::GrepQuery;
use crate::tools::{self, ReadRange};
use crate::workspace::{Mount, SessionDir};

/// Errors of running the server itself (not of tool calls).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    NoMount(ToolError),
    #[error("MCP over stdio failed: {0}")]
    Stdio(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the Unix socket {}: {source}", path.display())]
    BindUnix {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

fn yes() -> bool {
    true
}

fn dot() -> String {
    ".".into()
}

fn fifty() -> usize {
    50
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionOnly {}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReadFileParams {
    /// Session id (as listed by session_list).
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// File path relative to the session's workspace.
    pub path: String,
    /// First line to show, 1-based inclusive (default 1).
    pub start_line_one_indexed: Option<usize>,
    /// Last line to show, 1-based inclusive (default: 2000 lines from the start, or the end of the file).
    pub end_line_one_indexed_inclusive: Option<usize>,
    /// Show the whole file, ignoring the line range.
    #[serde(default)]
    pub should_read_entire_file: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteFileParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// File path relative to the session's workspace.
    pub path: String,
    /// The file's complete new content.
    pub content: String,
    /// Create missing parent directories.
    #[serde(rename = "createDirs", default = "yes")]
    pub create_dirs: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EditFileParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// File path relative to the session's workspace.
    pub path: String,
    /// The edit: changed code with `// ... existing code ...` marker lines standing for unchanged parts.
    /// The first and last line of each segment between markers must match exactly one line of the file.
    /// For a new file: the whole content, without markers.
    pub content: String,
    /// Replace the whole existing file with `content` (needed when content has no markers).
    #[serde(rename = "fullReplace", default)]
    pub full_replace: bool,
    /// Compute and return the diff (and proposed content) without writing.
    #[serde(rename = "dryRun", default)]
    pub dry_run: bool,
    /// Create missing parent directories of a new file.
    #[serde(rename = "createDirs", default = "yes")]
    pub create_dirs: bool,
    /// Optional description of the edit (accepted for compatibility; the merge is deterministic).
    pub instructions: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchReplaceParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// File path relative to the session's workspace.
    pub path: String,
    /// Literal text to find (not a regex); must occur exactly once unless replace_all.
    #[serde(alias = "old_string")]
    pub search: String,
    /// Literal replacement text.
    #[serde(alias = "new_string")]
    pub replace: String,
    /// Replace every occurrence.
    #[serde(default)]
    pub replace_all: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListDirectoryParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// Directory path relative to the session's workspace.
    #[serde(default = "dot")]
    pub path: String,
    /// Include entries whose names start with '.'.
    #[serde(rename = "showHidden", default)]
    pub show_hidden: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PathParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// Path relative to the session's workspace.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateDirectoryParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// Directory path relative to the session's workspace.
    pub path: String,
    /// Create missing parents too (and succeed if the directory exists).
    #[serde(default = "yes")]
    pub recursive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct MoveFileParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// Current path relative to the session's workspace.
    #[serde(rename = "sourcePath")]
    pub source_path: String,
    /// New path relative to the session's workspace.
    #[serde(rename = "targetPath")]
    pub target_path: String,
    /// Replace the target if it exists.
    #[serde(default)]
    pub overwrite: bool,
    /// Create the target's missing parent directories.
    #[serde(rename = "createDirs", default = "yes")]
    pub create_dirs: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RenameFileParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// Current path relative to the session's workspace.
    pub path: String,
    /// New name in the same directory (a name, not a path).
    #[serde(rename = "newName")]
    pub new_name: String,
    /// Replace an existing file of that name.
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GrepSearchParams {
    /// Session id.
    #[serde(rename = "sessionId", alias = "session")]
    pub session_id: String,
    /// Regular expression (Rust regex syntax, as ripgrep).
    pub query: String,
    /// Match case exactly.
    #[serde(default)]
    pub case_sensitive: bool,
    /// Glob of files to search, e.g. "*.rs" or "src/**/*.ts" (comma-separated for several).
    pub include_pattern: Option<String>,
    /// Glob of files to skip, e.g. "*.min.js" (comma-separated for several).
    pub exclude_pattern: Option<String>,
    /// Most matches (or files, with files_only) to return, 1-1000.
    #[serde(default = "fifty")]
    pub limit: usize,
    /// Return only the paths of matching files.
    #[serde(default)]
    pub files_only: bool,
}

/// Tool calls running at once (over all clients and transports); more wait for a slot.
pub const MAX_CALLS: usize = 16;
/// How long one edit (merge, search-replace, diff) may compute.
pub const EDIT_TIME_LIMIT: Duration = Duration::from_secs(10);

/// The session-tools MCP server.
#[derive(Clone)]
pub struct SessionTools {
    mount: Mount,
    catalog: Arc<dyn SessionCatalog>,
    /// Slots for tool calls, [`MAX_CALLS`] of them.
    calls: Arc<Semaphore>,
    tool_router: ToolRouter<SessionTools>,
}

/// Runs `f` with the session's directory on the blocking pool, in one of the server's call slots and
/// within an edit [`Budget`] that `cancelled` (the request's token) cancels; its error becomes the tool
/// error text.
async fn on_session<T, F>(
    tools: &SessionTools,
    id: String,
    cancelled: CancellationToken,
    f: F,
) -> Result<Json<T>, String>
where
    T: Send + 'static,
    F: FnOnce(&SessionDir, &Budget) -> Result<T, ToolError> + Send + 'static,
{
    let Ok(_slot) = tools.calls.clone().acquire_owned().await else {
        return Err("internal error: the server is shutting down".into());
    };
    let mount = tools.mount.clone();
    let budget = Budget::new(EDIT_TIME_LIMIT);
    let cancel = budget.cancel_flag();
    let mut task = tokio::task::spawn_blocking(move || {
        let dir = mount.session(&id)?;
        f(&dir, &budget)
    });
    let outcome = tokio::select! {
        outcome = &mut task => outcome,
        () = cancelled.cancelled() => {
            // The work stops at its next budget check; the slot is held until it has.
            cancel.store(true, Ordering::Relaxed);
            task.await
        }
    };
    match outcome {
        Ok(Ok(value)) => Ok(Json(value)),
        Ok(Err(e)) => {
            debug!(error = %e, "tool call failed");
            Err(e.to_string())
        }
        Err(e) => Err(format!(
            "internal error: the tool call did not complete: {e}"
        )),
    }
}

#[tool_router]
impl SessionTools {
    /// A server using the mount at `mount` and listing sessions from `catalog`.
    pub fn new(mount: Mount, catalog: Arc<dyn SessionCatalog>) -> SessionTools {
        SessionTools {
            mount,
            catalog,
            calls: Arc::new(Semaphore::new(MAX_CALLS)),
            tool_router: Self::tool_router(),
        }
    }

    /// Fails unless the bridge is mounted where the tools look.
    pub(crate) fn mount_check(&self) -> Result<(), ToolError> {
        self.mount.check()
    }

    #[tool(
        name = "session_list",
        description = "List the sessions: id, backend (local, docker), recorded state, current health, whether it is mounted, and its directory on this host.",
        annotations(read_only_hint = true)
    )]
    async fn session_list(
        &self,
        Parameters(_): Parameters<SessionOnly>,
    ) -> Result<Json<SessionListResult>, String> {
        let mount = self.mount.clone();
        let catalog = self.catalog.clone();
        let outcome = tokio::task::spawn_blocking(move || -> Result<SessionListResult, String> {
            mount.check().map_err(|e| e.to_string())?;
            let sessions = catalog.sessions()?;
            // The mount root lists sessions without dialing them.
            let in_mount: std::collections::HashSet<String> = std::fs::read_dir(mount.path())
                .map_err(|e| format!("cannot list {}: {e}", mount.path().display()))?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect();
            let listed = sessions
                .into_iter()
                .map(|info| ListedSession {
                    mounted: in_mount.contains(&info.id),
                    path: mount.path().join(&info.id).display().to_string(),
                    info,
                })
                .collect();
            Ok(SessionListResult {
                success: true,
                mount: mount.path().display().to_string(),
                sessions: listed,
            })
        })
        .await;
        match outcome {
            Ok(r) => r.map(Json),
            Err(e) => Err(format!("internal error: {e}")),
        }
    }

    #[tool(
        name = "session_read_file",
        description = "Read a text file in a session's workspace. Returns the lines asked for (default: up to 2000 lines from start_line_one_indexed or the top), the file's total line count, and a summary of the lines not shown. Binary or non-UTF-8 files are reported with their size and type instead of their content.",
        annotations(read_only_hint = true)
    )]
    async fn session_read_file(
        &self,
        Parameters(p): Parameters<ReadFileParams>,
    ) -> Result<Json<tools::ReadResult>, String> {
        let range = ReadRange {
            start: p.start_line_one_indexed,
            end: p.end_line_one_indexed_inclusive,
            entire: p.should_read_entire_file,
        };
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::read_file(dir, &p.path, range),
        )
        .await
    }

    #[tool(
        name = "session_write_file",
        description = "Write a file in a session's workspace, replacing it whole (atomically: readers see the old or the new content, never a mix). Returns bytesWritten and whether the file was created.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    async fn session_write_file(
        &self,
        Parameters(p): Parameters<WriteFileParams>,
    ) -> Result<Json<tools::WriteResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::write_file(dir, &p.path, &p.content, p.create_dirs),
        )
        .await
    }

    #[tool(
        name = "session_edit_file",
        description = "Edit a file in a session's workspace. `content` holds the changed code with `// ... existing code ...` marker lines for the unchanged parts between; it is merged deterministically: the first and last line of each segment between markers must each match exactly one line of the file (in order), else the edit is refused with the reason and nothing is written. Content without markers creates a new file, or replaces an existing one only with fullReplace. Returns a unified diff; dryRun only previews.",
        annotations(destructive_hint = true)
    )]
    async fn session_edit_file(
        &self,
        Parameters(p): Parameters<EditFileParams>,
        cancelled: CancellationToken,
    ) -> Result<Json<tools::EditResult>, String> {
        let _ = &p.instructions;
        on_session(self, p.session_id, cancelled, move |dir, budget| {
            tools::edit_file(
                dir,
                &tools::EditRequest {
                    path: &p.path,
                    content: &p.content,
                    full_replace: p.full_replace,
                    dry_run: p.dry_run,
                    create_dirs: p.create_dirs,
                },
                budget,
            )
        })
        .await
    }

    #[tool(
        name = "session_search_replace",
        description = "Replace literal text in a file of a session's workspace: `search` must occur exactly once (unless replace_all), is not a regex, and `replace` is inserted literally. Returns the replacement count and a unified diff.",
        annotations(destructive_hint = true)
    )]
    async fn session_search_replace(
        &self,
        Parameters(p): Parameters<SearchReplaceParams>,
        cancelled: CancellationToken,
    ) -> Result<Json<tools::SearchReplaceResult>, String> {
        on_session(self, p.session_id, cancelled, move |dir, budget| {
            tools::search_replace(dir, &p.path, &p.search, &p.replace, p.replace_all, budget)
        })
        .await
    }

    #[tool(
        name = "session_list_directory",
        description = "List a directory of a session's workspace (not recursive): files and directories, each entry with its type and size. Names starting with '.' are left out unless showHidden.",
        annotations(read_only_hint = true)
    )]
    async fn session_list_directory(
        &self,
        Parameters(p): Parameters<ListDirectoryParams>,
    ) -> Result<Json<tools::ListResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::list_directory(dir, &p.path, p.show_hidden),
        )
        .await
    }

    #[tool(
        name = "session_file_exists",
        description = "Whether a path exists in a session's workspace, and whether it is a file, a directory or a symlink (followed inside the workspace).",
        annotations(read_only_hint = true)
    )]
    async fn session_file_exists(
        &self,
        Parameters(p): Parameters<PathParams>,
    ) -> Result<Json<tools::ExistsResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::file_exists(dir, &p.path),
        )
        .await
    }

    #[tool(
        name = "session_delete_file",
        description = "Delete a file (or symlink) in a session's workspace. Directories are refused.",
        annotations(destructive_hint = true)
    )]
    async fn session_delete_file(
        &self,
        Parameters(p): Parameters<PathParams>,
    ) -> Result<Json<tools::DeleteResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::delete_file(dir, &p.path),
        )
        .await
    }

    #[tool(
        name = "session_create_directory",
        description = "Create a directory in a session's workspace, with its missing parents unless recursive is false.",
        annotations(idempotent_hint = true)
    )]
    async fn session_create_directory(
        &self,
        Parameters(p): Parameters<CreateDirectoryParams>,
    ) -> Result<Json<tools::CreateDirResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::create_directory(dir, &p.path, p.recursive),
        )
        .await
    }

    #[tool(
        name = "session_move_file",
        description = "Move (rename) a file or directory to another path in the same session's workspace. An existing target is refused unless overwrite; missing parent directories of the target are created unless createDirs is false.",
        annotations(destructive_hint = true)
    )]
    async fn session_move_file(
        &self,
        Parameters(p): Parameters<MoveFileParams>,
    ) -> Result<Json<tools::MoveResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| {
                tools::move_file(
                    dir,
                    &p.source_path,
                    &p.target_path,
                    p.overwrite,
                    p.create_dirs,
                )
            },
        )
        .await
    }

    #[tool(
        name = "session_rename_file",
        description = "Rename a file or directory within its directory in a session's workspace (newName is a name, not a path). An existing target is refused unless overwrite.",
        annotations(destructive_hint = true)
    )]
    async fn session_rename_file(
        &self,
        Parameters(p): Parameters<RenameFileParams>,
    ) -> Result<Json<tools::RenameResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| tools::rename_file(dir, &p.path, &p.new_name, p.overwrite),
        )
        .await
    }

    #[tool(
        name = "session_grep_search",
        description = "Search a session's workspace for a regular expression, as ripgrep does (honours .gitignore, skips hidden and binary files): matches with paths and line numbers, at most `limit`, with `truncated` set when there are more. include_pattern/exclude_pattern are globs such as \"*.rs\" or \"src/**\".",
        annotations(read_only_hint = true)
    )]
    async fn session_grep_search(
        &self,
        Parameters(p): Parameters<GrepSearchParams>,
    ) -> Result<Json<tools::GrepResult>, String> {
        on_session(
            self,
            p.session_id,
            CancellationToken::new(),
            move |dir, _| {
                tools::grep_search(
                    dir,
                    &GrepQuery {
                        pattern: &p.query,
                        case_sensitive: p.case_sensitive,
                        include: p.include_pattern.as_deref(),
                        exclude: p.exclude_pattern.as_deref(),
                        limit: p.limit,
                        files_only: p.files_only,
                    },
                )
            },
        )
        .await
    }
}

const INSTRUCTIONS: &str = "Session tools of sessionfs: read, write, edit, search and organize the files of \
isolated session workspaces (local directories or containers). Every tool takes a sessionId (see \
session_list) and paths relative to that session's workspace; paths that lead outside it are refused.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SessionTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sessionfs", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Serves MCP on stdin/stdout until the client closes them. Fails first if there is no mount.
pub async fn serve_stdio(tools: SessionTools) -> Result<(), ServeError> {
    tools.mount.check().map_err(ServeError::NoMount)?;
    info!(mount = %tools.mount.path().display(), "serving MCP on stdio");
    let (input, output, responses) = crate::stdio::front(tokio::io::stdin(), tokio::io::stdout());
    // The front bounds each message; rmcp's own bound must not drop what the front passed.
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(input, output)
        .with_max_line_length(crate::stdio::MAX_MESSAGE.saturating_add(1));
    let running = tools
        .serve(transport)
        .await
        .map_err(|e| ServeError::Stdio(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| ServeError::Stdio(e.to_string()))?;
    // rmcp's side is closed: what it wrote last still goes out (bounded, stdout may be stuck).
    if tokio::time::timeout(std::time::Duration::from_secs(5), responses)
        .await
        .is_err()
    {
        debug!("the last MCP responses were not all written within 5 s");
    }
    Ok(())
}
