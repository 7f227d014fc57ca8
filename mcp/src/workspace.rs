//! One session's workspace as the MCP tools see it: a directory of the mount (`<mount>/<id>`), with every
//! path confined to it.
//!
//! Confinement has two layers. [`SessionDir::relative`] normalizes the path an agent sent (relative to
//! the workspace, or absolute under `<mount>/<id>`) and refuses a `..` that climbs out before anything is
//! touched. Then every access resolves that path with `openat2(session_root, path, RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`: symlinks inside the workspace are followed as long as they stay inside it, and
//! one that leads out (absolute, or `..` past the root) fails with `EXDEV` in the kernel, which becomes
//! [`ToolError::Escape`]. Nothing is resolved by string prefix. Operations on a node work on descriptors of
//! its parent directory and its name (`*at` calls), so a path is resolved once per operation.
//!
//! Every call here blocks (file system calls through FUSE); the server runs them on the blocking pool.
//! A dead or stopped session fails inside the mount's operation timeout, so nothing here waits forever.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use sessionfs_mountinfo as mountinfo;

use crate::error::ToolError;

/// Most entries `session_list_directory` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// How paths are resolved beneath a session root: symlinks allowed while they stay beneath it.
/// The name of git's own data: never changed by the tools.
const GIT_DIR: &str = ".git";

/// Whether `path` has a component named [`GIT_DIR`].
fn in_git(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == GIT_DIR)
}
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// The bridge's mount point, as the tools use it.
#[derive(Clone, Debug)]
pub struct Mount {
    path: PathBuf,
}

impl Mount {
    /// The mount at `path` (made absolute; its parent canonicalized, the mount point itself not touched,
    /// since a dead FUSE mount cannot be stat'ed).
    pub fn new(path: &Path) -> io::Result<Mount> {
        let absolute = std::path::absolute(path)?;
        let path = match (absolute.parent(), absolute.file_name()) {
            (Some(parent), Some(name)) => parent.canonicalize()?.join(name),
            _ => absolute,
        };
        Ok(Mount { path })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails with [`ToolError::NoMount`] unless a sessionfs bridge is mounted at the mount point.
    pub fn check(&self) -> Result<(), ToolError> {
        let no_mount = |detail: String| ToolError::NoMount {
            mount: self.path.clone(),
            detail,
        };
        let entries = mountinfo::mounts()
            .map_err(|e| no_mount(format!("cannot read {}: {e}", mountinfo::MOUNTINFO)))?;
        match mountinfo::mounted_at(&entries, &self.path) {
            Some(entry) if entry.is_sessionfs() => match rfs::stat(&self.path) {
                // The root is answered by the bridge itself: this fails only if the bridge is gone.
                Err(Errno::NOTCONN) => Err(no_mount(
                    "its bridge process is gone (transport endpoint is not connected); unmount it \
                     with `sessionfs umount` and mount again"
                        .into(),
                )),
                _ => Ok(()),
            },
            Some(entry) => Err(no_mount(format!(
                "{} (type {}) is mounted there, not sessionfs",
                entry.source, entry.fs_type
            ))),
            None => Err(no_mount("nothing is mounted there".into())),
        }
    }

    /// Opens session `id`'s workspace: checks the mount, the id's syntax, that the session is listed in
    /// the mount, and that its daemon answers (a stat of the session root).
    pub fn session(&self, id: &str) -> Result<SessionDir, ToolError> {
        self.check()?;
        let id =
            sessionfs_registry::SessionId::new(id).map_err(|e| ToolError::InvalidArgument {
                message: format!("invalid sessionId {id:?}: {e}"),
            })?;
        let root_path = self.path.join(id.as_str());
        let unknown = || ToolError::UnknownSession {
            id: id.as_str().to_owned(),
        };
        let root = rfs::openat(
            rfs::CWD,
            &root_path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => unknown(),
            e => ToolError::unavailable(id.as_str(), e),
        })?;
        // The root's attributes come from the daemon: this is where a stopped or dead session shows.
        rfs::fstat(&root).map_err(|e| ToolError::unavailable(id.as_str(), e))?;
        Ok(SessionDir {
            id: id.into_string(),
            root_path,
            root,
        })
    }
}

/// A workspace path after lexical normalization: relative, no `.`/`..`/empty components; empty means the
/// workspace root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath(PathBuf);

impl RelPath {
    /// The path as the tools report it (`.` for the root).
    pub fn display(&self) -> String {
        if self.0.as_os_str().is_empty() {
            ".".into()
        } else {
            self.0.to_string_lossy().into_owned()
        }
    }

    /// Whether this is the workspace root.
    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The path for `*at` calls relative to the session root (`.` for the root).
    fn at(&self) -> &Path {
        if self.is_root() {
            Path::new(".")
        } else {
            &self.0
        }
    }

    /// The parent path and the final name; `None` for the root.
    pub fn split(&self) -> Option<(RelPath, &OsStr)> {
        let name = self.0.file_name()?;
        let parent = self.0.parent().unwrap_or(Path::new(""));
        Some((RelPath(parent.to_path_buf()), name))
    }

    /// `self/name`.
    pub fn join(&self, name: &OsStr) -> RelPath {
        RelPath(self.0.join(name))
    }
}

/// What a node is, as the tools report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

impl Kind {
    pub fn of(stat: &Stat) -> Kind {
        Kind::of_file_type(FileType::from_raw_mode(stat.st_mode))
    }

    pub fn of_file_type(file_type: FileType) -> Kind {
        match file_type {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Directory,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// One directory entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub size: u64,
}

/// One session's workspace, opened through the mount.
pub struct SessionDir {
    id: String,
    root_path: PathBuf,
    root: OwnedFd,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SessionDir {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Normalizes `path` (relative to the workspace, or absolute under `<mount>/<id>`) without touching
    /// the file system; refuses absolute paths elsewhere and `..` above the workspace root.
    pub fn relative(&self, path: &str) -> Result<RelPath, ToolError> {
        normalize_path(&self.root_path, path).map(RelPath)
    }

    /// Maps an errno from resolving or acting on `path` to a tool error.
    fn fail(&self, path: &RelPath, e: Errno) -> ToolError {
        ToolError::from_errno(&self.id, &path.display(), e)
    }

    /// `openat2` beneath the session root. `EAGAIN` (a rename raced with resolving `..`) is retried.
    fn open_beneath(
        &self,
        path: &RelPath,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, ToolError> {
        let mut attempts = 0;
        loop {
            match rfs::openat2(
                &self.root,
                path.at(),
                flags | OFlags::CLOEXEC,
                mode,
                RESOLVE,
            ) {
                Err(Errno::AGAIN) if attempts < 8 => attempts += 1,
                outcome => return outcome.map_err(|e| self.fail(path, e)),
            }
        }
    }

    /// An `O_PATH` descriptor of `path`'s node, following symlinks that stay inside (or, with
    /// `follow = false`, not the final one).
    fn node(&self, path: &RelPath, follow: bool) -> Result<OwnedFd, ToolError> {
        let mut flags = OFlags::PATH;
        if !follow {
            flags |= OFlags::NOFOLLOW;
        }
        self.open_beneath(path, flags, Mode::empty())
    }

    /// Stat of `path`'s node (following symlinks that stay inside, or not the final one).
    pub fn stat(&self, path: &RelPath, follow: bool) -> Result<Stat, ToolError> {
        let fd = self.node(path, follow)?;
        rfs::fstat(&fd).map_err(|e| self.fail(path, e))
    }

    /// Stat of `path`, `None` if it does not exist (or a parent is not a directory).
    pub fn try_stat(&self, path: &RelPath, follow: bool) -> Result<Option<Stat>, ToolError> {
        match self.stat(path, follow) {
            Ok(st) => Ok(Some(st)),
            // `file.txt/x` does not exist either.
            Err(ToolError::NotFound { .. } | ToolError::NotDirectory { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory holding `path` (opened beneath the root) and `path`'s final name.
    fn parent(&self, path: &RelPath) -> Result<(OwnedFd, std::ffi::OsString), ToolError> {
        let Some((parent, name)) = path.split() else {
            return Err(ToolError::InvalidArgument {
                message: "the workspace root itself cannot be the target of this operation".into(),
            });
        };
        let dir = self.open_beneath(&parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok((dir, name.to_owned()))
    }

    /// Refuses a change of `path` that names git's own data before anything is done (such as making
    /// parents); [`SessionDir::parent_to_change`] checks again once symlinks are resolved.
    fn not_git(path: &RelPath) -> Result<(), ToolError> {
        if in_git(&path.0) {
            return Err(ToolError::GitMetadata {
                path: path.display(),
            });
        }
        Ok(())
    }

    /// Refuses changing `name` in the directory that is really at `real` (symlinks resolved) when
    /// either is git's own data; the error names `shown`.
    fn not_git_at(real: &RelPath, name: &OsStr, shown: &RelPath) -> Result<(), ToolError> {
        if name == GIT_DIR || in_git(&real.0) {
            return Err(ToolError::GitMetadata {
                path: shown.display(),
            });
        }
        Ok(())
    }

    /// Like [`SessionDir::parent`], for a call that changes the name: refused when the name is `.git`
    /// or its directory, once symlinks are resolved, is or lies inside a `.git` directory. Git on the
    /// host runs the commands a repository's config and hooks name (`core.fsmonitor`, `pre-commit`),
    /// so an agent (or what an agent was made to read) must not write them through these tools.
    fn parent_to_change(&self, path: &RelPath) -> Result<(OwnedFd, std::ffi::OsString), ToolError> {
        let (dir, name) = self.parent(path)?;
        let (parent, _) = path
            .split()
            .unwrap_or((RelPath(PathBuf::new()), OsStr::new("")));
        let real = self.canonical(&dir, &parent)?;
        Self::not_git_at(&real, &name, path)?;
        Ok((dir, name))
    }

    /// Where `path` really is inside the workspace: symlinks (that stay inside) resolved.
    fn canonical(&self, fd: &OwnedFd, path: &RelPath) -> Result<RelPath, ToolError> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| self.fail(path, errno_of(&e)))?;
        let rest = link
            .strip_prefix(&self.root_path)
            .map_err(|_| ToolError::Escape {
                path: path.display(),
                reason: format!("it resolves to {}, outside the workspace", link.display()),
            })?;
        Ok(RelPath(rest.to_path_buf()))
    }

    /// The attributes of the node `fd` (found at `path`), which must be a regular file.
    fn regular_file(&self, fd: &OwnedFd, path: &RelPath) -> Result<Stat, ToolError> {
        let st = rfs::fstat(fd).map_err(|e| self.fail(path, e))?;
        match Kind::of(&st) {
            Kind::File => Ok(st),
            Kind::Directory => Err(ToolError::IsDirectory {
                path: path.display(),
            }),
            _ => Err(ToolError::NotRegular {
                path: path.display(),
            }),
        }
    }

    /// Opens the regular file at `path` for reading (symlinks followed while inside); anything else is
    /// refused before it is opened for I/O (no FIFO can block the server).
    pub fn open_file(&self, path: &RelPath) -> Result<(File, Stat), ToolError> {
        let fd = self.node(path, true)?;
        let st = self.regular_file(&fd, path)?;
        // Reopen the very node that was checked, not the path again.
        let file = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| self.fail(path, errno_of(&e)))?;
        Ok((file, st))
    }

    /// Reads the whole regular file at `path`, refusing files larger than `limit` bytes.
    pub fn read_all(&self, path: &RelPath, limit: u64) -> Result<Vec<u8>, ToolError> {
        let (file, st) = self.open_file(path)?;
        let size = st.st_size as u64;
        if size > limit {
            return Err(ToolError::TooLarge {
                path: path.display(),
                size,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| self.fail(path, errno_of(&e)))?;
        if buf.len() as u64 > limit {
            return Err(ToolError::TooLarge {
                path: path.display(),
                size: buf.len() as u64,
                limit,
            });
        }
        Ok(buf)
    }

    /// Like [`Self::read_all`], `None` if nothing is at `path` (or a parent is not a directory).
    pub fn try_read_all(&self, path: &RelPath, limit: u64) -> Result<Option<Vec<u8>>, ToolError> {
        match self.read_all(path, limit) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ToolError::NotFound { .. } | ToolError::NotDirectory { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces (or creates) the file at `path` with `content` atomically: written to a temporary file
    /// in the same directory, flushed, then renamed over the target, so a reader sees the old or the new
    /// content, never a mix. An existing file keeps its permission bits; a symlink (inside the
    /// workspace) is written through. Returns whether the file was created.
    pub fn write_atomic(
        &self,
        path: &RelPath,
        content: &[u8],
        create_dirs: bool,
    ) -> Result<bool, ToolError> {
        let (parent, _) = path.split().ok_or_else(|| ToolError::IsDirectory {
            path: path.display(),
        })?;
        Self::not_git(path)?;
        if create_dirs && !parent.is_root() {
            self.create_dir_all(&parent)?;
        }
        // Follow a symlink to the file it names, so the link stays a link.
        let mut target = path.clone();
        let mut existing: Option<Stat> = None;
        match self.node(path, true) {
            Ok(fd) => {
                let st = self.regular_file(&fd, path)?;
                target = self.canonical(&fd, path)?;
                existing = Some(st);
            }
            Err(ToolError::NotFound { .. }) => {
                // A dangling symlink: writing would replace the link, not create what it names.
                if let Some(st) = self.try_stat(path, false)? {
                    if Kind::of(&st) == Kind::Symlink {
                        return Err(ToolError::InvalidArgument {
                            message: format!(
                                "{} is a symlink to a file that does not exist; write to the link's target",
                                path.display()
                            ),
                        });
                    }
                }
            }
            Err(e) => return Err(e),
        }
        let (dir, name) = self.parent_to_change(&target)?;
        if let Some(st) = &existing {
            // The name found from the checked descriptor must still be that file (not renamed or
            // replaced meanwhile), or the write would land on something else.
            match rfs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(now) if now.st_dev == st.st_dev && now.st_ino == st.st_ino => {}
                _ => {
                    return Err(ToolError::Changed {
                        path: path.display(),
                    })
                }
            }
        }
        let mode = existing
            .as_ref()
            .map(|st| Mode::from_raw_mode(st.st_mode) & Mode::from_bits_truncate(0o7777));
        let (tmp, tmp_name) = self.create_temp(&dir, &name, &target, mode)?;
        let written = (|| -> Result<(), Errno> {
            if let Some(mode) = mode {
                // The process umask applied at creation; an existing file's bits are restored exactly.
                rfs::fchmod(&tmp, mode)?;
            }
            let mut file = File::from(tmp);
            file.write_all(content).map_err(|e| errno_of(&e))?;
            file.sync_all().map_err(|e| errno_of(&e))?;
            drop(file);
            rfs::renameat(&dir, &tmp_name, &dir, &name)
        })();
        if let Err(e) = written {
            let _ = rfs::unlinkat(&dir, &tmp_name, AtFlags::empty());
            return Err(self.fail(&target, e));
        }
        Ok(mode.is_none())
    }

    /// Creates a new temporary file next to `name` in `dir` (exclusively, with an unpredictable name, so
    /// a name planted in the workspace cannot be reused); retried on a name clash.
    fn create_temp(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        target: &RelPath,
        mode: Option<Mode>,
    ) -> Result<(OwnedFd, std::ffi::OsString), ToolError> {
        let created_mode = mode.unwrap_or(Mode::from_bits_truncate(0o666));
        let mut attempts = 0;
        loop {
            let tmp_name = temp_name(name);
            match rfs::openat2(
                dir,
                &tmp_name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                created_mode,
                RESOLVE,
            ) {
                Ok(fd) => return Ok((fd, tmp_name)),
                Err(Errno::EXIST) if attempts < 8 => attempts += 1,
                Err(e) => return Err(self.fail(target, e)),
            }
        }
    }

    /// Lists the directory at `path` (symlinks followed while inside): entries sorted by name, each with
    /// its kind (symlinks reported as such) and size; at most [`MAX_LIST_ENTRIES`] (then `true`).
    pub fn list_dir(&self, path: &RelPath) -> Result<(Vec<Entry>, bool), ToolError> {
        let dir = self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut entries = Vec::new();
        let mut truncated = false;
        for entry in rfs::Dir::read_from(&dir).map_err(|e| self.fail(path, e))? {
            let entry = entry.map_err(|e| self.fail(path, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if entries.len() == MAX_LIST_ENTRIES {
                truncated = true;
                break;
            }
            let name_os = OsStr::from_bytes(name);
            let (kind, size) = match rfs::statat(&dir, name_os, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => (Kind::of(&st), st.st_size as u64),
                // Removed between readdir and stat.
                Err(Errno::NOENT) => continue,
                // Listed but not stat-able: shown with the type readdir gave.
                Err(_) => (Kind::of_file_type(entry.file_type()), 0),
            };
            entries.push(Entry {
                name: String::from_utf8_lossy(name).into_owned(),
                kind,
                size,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((entries, truncated))
    }

    /// Removes the file (or symlink, not what it names) at `path`; directories are refused.
    pub fn delete_file(&self, path: &RelPath) -> Result<Kind, ToolError> {
        let (dir, name) = self.parent_to_change(path)?;
        let st =
            rfs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.fail(path, e))?;
        let kind = Kind::of(&st);
        if kind == Kind::Directory {
            return Err(ToolError::IsDirectory {
                path: path.display(),
            });
        }
        rfs::unlinkat(&dir, &name, AtFlags::empty()).map_err(|e| self.fail(path, e))?;
        Ok(kind)
    }

    /// Creates the directory at `path`: with its missing parents (`recursive`), or only it. Returns
    /// whether anything was created; an existing directory is fine when `recursive`.
    pub fn create_dir(&self, path: &RelPath, recursive: bool) -> Result<bool, ToolError> {
        Self::not_git(path)?;
        if recursive {
            return self.create_dir_all(path);
        }
        let (dir, name) = self.parent_to_change(path)?;
        rfs::mkdirat(&dir, &name, Mode::from_bits_truncate(0o777)).map_err(|e| match e {
            Errno::EXIST => ToolError::AlreadyExists {
                path: path.display(),
            },
            e => self.fail(path, e),
        })?;
        Ok(true)
    }

    /// `mkdir -p` beneath the root, one component at a time; each step resolved beneath the root.
    pub fn create_dir_all(&self, path: &RelPath) -> Result<bool, ToolError> {
        let mut current = RelPath(PathBuf::new());
        let mut created = false;
        for c in path.0.components() {
            let Component::Normal(name) = c else { continue };
            let dir =
                self.open_beneath(&current, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
            let real = self.canonical(&dir, &current)?;
            current = current.join(name);
            Self::not_git_at(&real, name, &current)?;
            match rfs::mkdirat(&dir, name, Mode::from_bits_truncate(0o777)) {
                Ok(()) => created = true,
                Err(Errno::EXIST) => {
                    // Fine if it is a directory (or a symlink to one inside the workspace).
                    let st = self.stat(&current, true)?;
                    if Kind::of(&st) != Kind::Directory {
                        return Err(ToolError::NotDirectory {
                            path: current.display(),
                        });
                    }
                }
                Err(e) => return Err(self.fail(&current, e)),
            }
        }
        Ok(created)
    }

    /// Renames `from` to `to` (files, symlinks or directories). Without `overwrite` an existing target is
    /// refused atomically (`RENAME_NOREPLACE`); `create_dirs` creates the target's missing parents.
    pub fn rename(
        &self,
        from: &RelPath,
        to: &RelPath,
        overwrite: bool,
        create_dirs: bool,
    ) -> Result<(), ToolError> {
        let (from_dir, from_name) = self.parent_to_change(from)?;
        rfs::statat(&from_dir, &from_name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.fail(from, e))?;
        if to.is_root() {
            return Err(ToolError::InvalidArgument {
                message: "the target cannot be the workspace root".into(),
            });
        }
        if from == to {
            return Err(ToolError::InvalidArgument {
                message: format!("source and target are the same path {}", from.display()),
            });
        }
        let into_itself = || ToolError::InvalidArgument {
            message: format!(
                "cannot move {} into itself ({})",
                from.display(),
                to.display()
            ),
        };
        // Checked before creating the target's parents, which would otherwise be left behind.
        if to.0.starts_with(&from.0) {
            return Err(into_itself());
        }
        Self::not_git(to)?;
        if create_dirs {
            if let Some((parent, _)) = to.split() {
                if !parent.is_root() {
                    self.create_dir_all(&parent)?;
                }
            }
        }
        let (to_dir, to_name) = self.parent_to_change(to)?;
        let flags = if overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        rfs::renameat_with(&from_dir, &from_name, &to_dir, &to_name, flags).map_err(|e| match e {
            Errno::EXIST if !overwrite => ToolError::AlreadyExists { path: to.display() },
            Errno::NOTEMPTY | Errno::EXIST => ToolError::InvalidArgument {
                message: format!(
                    "{} is a directory that is not empty; it cannot be replaced",
                    to.display()
                ),
            },
            // Both ends were resolved beneath the root; EXDEV here means another file system mounted
            // inside the workspace (a volume inside the container's workspace).
            Errno::XDEV => ToolError::InvalidArgument {
                message: format!(
                    "{} and {} are on different file systems inside the session; copy and delete instead",
                    from.display(),
                    to.display()
                ),
            },
            Errno::INVAL => into_itself(),
            e => self.fail(to, e),
        })
    }

    /// The directory at `path` opened for reading its entries (grep walks from it).
    pub fn open_dir_for_reading(&self, path: &RelPath) -> Result<OwnedFd, ToolError> {
        self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }
}

/// `.<name>.sessionfs-<random>.tmp`: hidden, next to the target, not guessable from inside the workspace.
fn temp_name(name: &OsStr) -> std::ffi::OsString {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; the counter makes every call differ.
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let mut s = std::ffi::OsString::from(".");
    // Keep the name well under NAME_MAX even for long targets.
    let bytes = name.as_bytes();
    s.push(OsStr::from_bytes(&bytes[..bytes.len().min(200)]));
    s.push(format!(".sessionfs-{:016x}.tmp", hasher.finish()));
    s
}

/// The errno inside an I/O error (`EIO` if it has none).
pub fn errno_of(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::IO, Errno::from_raw_os_error)
}

/// Normalizes `path`, relative to a session's workspace or absolute under `session_root` (its
/// directory in the mount), without touching the file system: the result is relative and made of
/// plain names only. Refuses a NUL byte, an absolute path elsewhere and a `..` above the root.
pub fn normalize_path(session_root: &Path, path: &str) -> Result<PathBuf, ToolError> {
    if path.contains('\0') {
        return Err(ToolError::InvalidArgument {
            message: format!("path {path:?} contains a NUL byte"),
        });
    }
    let p = Path::new(path);
    let rest = if p.is_absolute() {
        p.strip_prefix(session_root)
            .map_err(|_| ToolError::Escape {
                path: path.to_owned(),
                reason: format!(
                    "it is absolute and not under the session's directory {}; give paths relative \
                 to the workspace (e.g. \"src/main.rs\")",
                    session_root.display()
                ),
            })?
    } else {
        p
    };
    let mut out = PathBuf::new();
    for c in rest.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(ToolError::Escape {
                        path: path.to_owned(),
                        reason: "its `..` leads outside the workspace (above its root)".into(),
                    });
                }
            }
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}
