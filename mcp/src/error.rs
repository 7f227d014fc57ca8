//! Tool errors: every way a session tool can fail, each with a message an agent can act on. They become
//! MCP tool results with `isError: true` (never protocol errors, never a crash of the server).

use std::path::PathBuf;

use rustix::io::Errno;

use crate::edit::EditError;

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// No sessionfs bridge is mounted where the server looks.
    #[error("no sessionfs mount at {}: {detail}; start one with `sessionfs mount {}` (or pass --mount)", mount.display(), mount.display())]
    NoMount { mount: PathBuf, detail: String },
    /// The id is not a session in the mount.
    #[error(
        "unknown session {id:?}: it is not mounted (session_list shows the sessions there are)"
    )]
    UnknownSession { id: String },
    /// The session exists but its daemon cannot serve now.
    #[error("session {id:?} is unavailable: {reason}")]
    SessionUnavailable { id: String, reason: String },
    /// The path leads outside the session's workspace.
    #[error("path {path:?} is refused: {reason}")]
    Escape { path: String, reason: String },
    /// Nothing at the path.
    #[error("{path} does not exist")]
    NotFound { path: String },
    /// A directory where a file was expected.
    #[error("{path} is a directory, not a file")]
    IsDirectory { path: String },
    /// Something other than a directory where a directory was expected.
    #[error("{path} (or one of its parents) is not a directory")]
    NotDirectory { path: String },
    /// Neither a regular file nor a directory (FIFO, socket, device).
    #[error("{path} is not a regular file (a FIFO, socket or device)")]
    NotRegular { path: String },
    /// The target exists and the call does not replace it.
    #[error("{path} already exists (set overwrite to replace it)")]
    AlreadyExists { path: String },
    /// A file too large for the call.
    #[error("{path} is {size} bytes, more than the {limit} bytes the session tools load; use the mount for it")]
    TooLarge { path: String, size: u64, limit: u64 },
    /// A file that is not UTF-8 text where text is needed.
    #[error("{path} is not UTF-8 text ({what}); text tools cannot edit it")]
    NotText { path: String, what: String },
    /// The edit or search-replace was refused (the file is unchanged).
    #[error("edit of {path} refused, the file is unchanged: {source}")]
    Edit {
        path: String,
        #[source]
        source: EditError,
    },
    /// A change to git's own data (a `.git` file or directory, or anything inside one).
    #[error("{path} is git's own data (named .git or inside a .git directory): the session tools do not change it, since git on the host runs the commands its config and hooks name; use git in the session instead")]
    GitMetadata { path: String },
    /// The file changed between reading it and writing it (another writer).
    #[error("{path} changed while this call was working on it (another writer); nothing was written: read it again and retry")]
    Changed { path: String },
    /// A symlink loop inside the workspace.
    #[error("{path}: too many levels of symbolic links (a symlink loop)")]
    SymlinkLoop { path: String },
    /// A parameter that cannot be used.
    #[error("{message}")]
    InvalidArgument { message: String },
    /// Permission denied by the workspace.
    #[error("{path}: permission denied ({errno})")]
    Permission { path: String, errno: String },
    /// Any other file system error.
    #[error("{path}: {errno}")]
    Io { path: String, errno: String },
}

impl ToolError {
    /// The error for errno `e` from resolving or acting on `path` in session `id`.
    pub fn from_errno(id: &str, path: &str, e: Errno) -> ToolError {
        let path = path.to_owned();
        match e {
            Errno::NOENT => ToolError::NotFound { path },
            Errno::ISDIR => ToolError::IsDirectory { path },
            Errno::NOTDIR => ToolError::NotDirectory { path },
            Errno::EXIST | Errno::NOTEMPTY => ToolError::AlreadyExists { path },
            Errno::XDEV => ToolError::Escape {
                path,
                reason: "it resolves outside the session's workspace (a symlink or `..` leads out)"
                    .into(),
            },
            Errno::LOOP => ToolError::SymlinkLoop { path },
            Errno::ACCESS | Errno::PERM | Errno::ROFS => ToolError::Permission {
                path,
                errno: describe(e),
            },
            Errno::NOTCONN | Errno::TIMEDOUT | Errno::CONNREFUSED | Errno::HOSTUNREACH => {
                ToolError::unavailable(id, e)
            }
            e => ToolError::Io {
                path,
                errno: describe(e),
            },
        }
    }

    /// Session `id`'s daemon failed with `e` (on the session root, or mid-operation).
    pub fn unavailable(id: &str, e: Errno) -> ToolError {
        let reason = match e {
            Errno::NOTCONN => format!(
                "its daemon is not running (stopped, or its container is down); `sessionfs session start {id}` starts it"
            ),
            Errno::TIMEDOUT => "its daemon did not answer within the mount's operation timeout (unhealthy or overloaded); `sessionfs session ls` shows its state".to_string(),
            e => format!("the mount reports {}", describe(e)),
        };
        ToolError::SessionUnavailable {
            id: id.to_owned(),
            reason,
        }
    }
}

/// `strerror` text with the errno name, e.g. `No such file or directory (ENOENT)`.
fn describe(e: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(e.raw_os_error()).to_string();
    // io::Error's Display is "<text> (os error N)".
    match text.rsplit_once(" (os error") {
        Some((t, _)) => format!("{t} (errno {})", e.raw_os_error()),
        None => text,
    }
}
