//! Where `session_list` gets sessions from. The server does not know the backends: the `sessionfs` command
//! line passes a [`SessionCatalog`] built on its registry and backends (state, container health), and the
//! server adds what the mount shows.

/// One session as a backend sees it.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The session id (its directory under the mount).
    pub id: String,
    /// `local`, `docker` or `kubernetes`.
    pub backend: String,
    /// Recorded lifecycle state: starting, running, unhealthy, stopped, gone.
    pub state: String,
    /// What the backend reports now: `healthy`, `unhealthy`, `starting`, `stopped`, `dead` (recorded as
    /// running but its process or container is not), `gone`, or `unknown`.
    pub health: String,
    /// Where its daemon listens, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The source of [`SessionInfo`]s.
pub trait SessionCatalog: Send + Sync + 'static {
    /// Every registered session; the error text is shown to the agent.
    fn sessions(&self) -> Result<Vec<SessionInfo>, String>;
}

/// `session_list`'s entry: the backend's view plus the mount's.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedSession {
    #[serde(flatten)]
    pub info: SessionInfo,
    /// Whether the session's directory is in the mount (sessions that are gone are not).
    pub mounted: bool,
    /// The session's directory on this host.
    pub path: String,
}

/// `session_list`'s result.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionListResult {
    pub success: bool,
    /// The mount point the tools use.
    pub mount: String,
    pub sessions: Vec<ListedSession>,
}
