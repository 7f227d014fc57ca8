//! The session image (`sessionfs image build`): a statically linked `sessionfsd` and an empty
//! `/workspace`, built through the Docker API from a tar context made in memory, pulling
//! nothing.
//!
//! - [`find_static_daemon`] finds the static daemon (`$SESSIONFS_STATIC_DAEMON`, else
//!   `<target>/x86_64-unknown-linux-gnu/release/sessionfsd` next to this program's target
//!   directory) and [`check_static`] refuses a binary that needs an ELF interpreter, which a
//!   `FROM scratch` image does not have.
//! - [`dockerfile`] and [`build_context`] make the context: `FROM scratch` with the daemon at
//!   `/sessionfsd`, or `FROM <base>` (an image that must exist locally) with the daemon at
//!   `/usr/local/bin/sessionfsd`; either way the label `sessionfs.image=1` and the entrypoint
//!   set to the daemon. Nothing secret goes into the image: certificates reach a container
//!   when it is created ([`crate::docker`]).
//! - [`build`] runs the build and reports its output line by line.

use crate::file_error::io_error;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::docker::{DockerError, Engine, TarEntry, DAEMON_PORT, WORKSPACE};

/// The tag built by default and used by `session create --backend docker` by default.
pub const DEFAULT_TAG: &str = "sessionfs-session:latest";
/// Environment variable naming the statically linked daemon to put into the image.
pub const STATIC_DAEMON_ENV: &str = "SESSIONFS_STATIC_DAEMON";
/// The target the static daemon is built for.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The command that builds the static daemon.
pub const STATIC_BUILD_COMMAND: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build \
     --release -p sessionfs-daemon --target x86_64-unknown-linux-gnu";
/// The label every session image carries (value `1`).
pub const IMAGE_LABEL: &str = "sessionfs.image";
/// The daemon's path in a `FROM scratch` image.
pub const SCRATCH_DAEMON_PATH: &str = "/sessionfsd";
/// The daemon's path in an image built `--base` another.
pub const BASE_DAEMON_PATH: &str = "/usr/local/bin/sessionfsd";

/// ELF program header type of the interpreter request.
const PT_INTERP: u32 = 3;

/// Errors of `sessionfs image build`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No static daemon was found.
    #[error(
        "cannot find a statically linked sessionfsd ({looked}); build it with `{STATIC_BUILD_COMMAND}` \
         or set {STATIC_DAEMON_ENV} to its path"
    )]
    StaticDaemonNotFound {
        /// Where it was looked for, in words.
        looked: String,
    },
    /// The daemon is dynamically linked.
    #[error(
        "{} is dynamically linked (it asks for the ELF interpreter {interpreter}), so it cannot run \
         in a FROM scratch image; build a static one with `{STATIC_BUILD_COMMAND}`",
        path.display()
    )]
    NotStatic {
        /// The binary.
        path: PathBuf,
        /// Its `PT_INTERP`.
        interpreter: String,
    },
    /// The file is not a 64-bit little-endian ELF executable.
    #[error("{} is not a usable sessionfsd executable: {reason}", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::file_error::FileError),
    /// `--base` names an image that is not there.
    #[error(
        "base image `{0}` does not exist locally (nothing is pulled: load or build it first, \
         e.g. with `docker load` or `docker build`)"
    )]
    BaseMissing(String),
    /// An image reference with characters that do not belong in one.
    #[error("invalid image reference {0:?}")]
    BadReference(String),
    /// The engine.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// Finds the static daemon: `$SESSIONFS_STATIC_DAEMON` if set, else
/// `<target>/x86_64-unknown-linux-gnu/release/sessionfsd` where `<target>` is the cargo target
/// directory holding the running executable.
pub fn find_static_daemon() -> Result<PathBuf, ImageError> {
    locate_static_daemon(
        std::env::var_os(STATIC_DAEMON_ENV),
        std::env::current_exe().ok(),
    )
}

/// [`find_static_daemon`] with its inputs passed in.
pub fn locate_static_daemon(
    env: Option<OsString>,
    current_exe: Option<PathBuf>,
) -> Result<PathBuf, ImageError> {
    if let Some(explicit) = env.filter(|v| !v.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if explicit.is_file() {
            Ok(explicit)
        } else {
            Err(ImageError::StaticDaemonNotFound {
                looked: format!("{STATIC_DAEMON_ENV}={} is not a file", explicit.display()),
            })
        };
    }
    let mut looked = Vec::new();
    // <target>/<profile>/sessionfs, or <target>/<profile>/deps/<test binary>.
    let mut dir = current_exe.as_deref().and_then(Path::parent);
    if dir.is_some_and(|d| d.file_name().is_some_and(|n| n == "deps")) {
        dir = dir.and_then(Path::parent);
    }
    if let Some(target) = dir.and_then(Path::parent) {
        let candidate = target
            .join(STATIC_TARGET)
            .join("release")
            .join(crate::local::DAEMON_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    looked.insert(0, format!("{STATIC_DAEMON_ENV} is not set"));
    Err(ImageError::StaticDaemonNotFound {
        looked: looked.join("; looked at "),
    })
}

/// The `PT_INTERP` of the 64-bit little-endian ELF file `elf`, if it has one.
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>, String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("it is not an ELF file".to_owned());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("it is not a 64-bit little-endian ELF file".to_owned());
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let truncated = || "its ELF header is truncated".to_owned();
    let phoff = u64_at(0x20).ok_or_else(truncated)?;
    let phentsize = u16_at(0x36).ok_or_else(truncated)?;
    let phnum = u16_at(0x38).ok_or_else(truncated)?;
    let phoff = usize::try_from(phoff).map_err(|_| truncated())?;
    for i in 0..usize::from(phnum) {
        let at = phoff
            .checked_add(i * usize::from(phentsize))
            .ok_or_else(truncated)?;
        let p_type = u32_at(at).ok_or("its program headers are truncated")?;
        if p_type != PT_INTERP {
            continue;
        }
        let bad = || "its PT_INTERP header is out of bounds".to_owned();
        let offset = u64_at(at + 8).ok_or_else(bad)?;
        let size = u64_at(at + 32).ok_or_else(bad)?;
        let start = usize::try_from(offset).map_err(|_| bad())?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .ok_or_else(bad)?;
        let raw = elf.get(start..end).ok_or_else(bad)?;
        let text = String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_owned();
        return Ok(Some(text));
    }
    Ok(None)
}

/// Reads the daemon at `path` and checks that it is a static ELF executable; returns its bytes.
pub fn check_static(path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error("read", path))?;
    match elf_interpreter(&bytes) {
        Ok(None) => Ok(bytes),
        Ok(Some(interpreter)) => Err(ImageError::NotStatic {
            path: path.to_path_buf(),
            interpreter,
        }),
        Err(reason) => Err(ImageError::NotElf {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// Refuses image references with characters outside Docker's reference alphabet (which
/// also keeps them from breaking a Dockerfile line).
pub fn check_reference(reference: &str) -> Result<(), ImageError> {
    let ok = !reference.is_empty()
        && !reference.starts_with(['-', '.', ':', '/'])
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadReference(reference.to_owned()))
    }
}

/// The daemon's path in an image built on `base` (or on nothing).
pub fn daemon_path(base: Option<&str>) -> &'static str {
    if base.is_some() {
        BASE_DAEMON_PATH
    } else {
        SCRATCH_DAEMON_PATH
    }
}

/// The Dockerfile of the session image, `FROM scratch` or `FROM base`.
pub fn dockerfile(base: Option<&str>) -> String {
    let daemon = daemon_path(base);
    let version = env!("CARGO_PKG_VERSION");
    let from = match base {
        Some(base) => format!(
            "FROM {base}\n\
             # The daemon serves as root so that it can create files for any caller.\n\
             USER 0:0\n"
        ),
        None => "FROM scratch\n".to_owned(),
    };
    format!(
        "{from}\
         COPY sessionfsd {daemon}\n\
         COPY workspace {WORKSPACE}\n\
         LABEL {IMAGE_LABEL}=1 sessionfs.version={version}\n\
         EXPOSE {DAEMON_PORT}/udp\n\
         ENTRYPOINT [\"{daemon}\"]\n"
    )
}

/// The build context: `Dockerfile`, `sessionfsd` (0755) and the empty `workspace/` (0755).
pub fn build_context(daemon: Vec<u8>, base: Option<&str>) -> std::io::Result<Vec<u8>> {
    crate::docker::write_tar(&[
        TarEntry::file("Dockerfile", 0o644, dockerfile(base).into_bytes()),
        TarEntry::file("sessionfsd", 0o755, daemon),
        TarEntry::dir("workspace/", 0o755),
    ])
}

/// Arguments of `image build`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The tag to give the image.
    pub tag: String,
    /// The local image to build on; `None` for `FROM scratch`.
    pub base: Option<String>,
    /// The static daemon; `None` to `find_static_daemon`.
    pub daemon: Option<PathBuf>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            tag: DEFAULT_TAG.to_owned(),
            base: None,
            daemon: None,
        }
    }
}

/// What `image build` made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The tag.
    pub tag: String,
    /// The image id, if the engine reported it.
    pub id: Option<String>,
    /// The base image, if any.
    pub base: Option<String>,
    /// The daemon binary put into it.
    pub daemon: PathBuf,
}

impl std::fmt::Display for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "built image {}", self.tag)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        match &self.base {
            Some(base) => write!(f, " from {base}, daemon at {BASE_DAEMON_PATH}"),
            None => write!(f, " from scratch, daemon at {SCRATCH_DAEMON_PATH}"),
        }
    }
}

/// `image build`: checks the daemon and the base, then builds the image, passing each line
/// of the engine's output to `progress`.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Built, ImageError> {
    check_reference(&opts.tag)?;
    if let Some(base) = &opts.base {
        check_reference(base)?;
    }
    let daemon = match &opts.daemon {
        Some(path) => path.clone(),
        None => find_static_daemon()?,
    };
    let bytes = check_static(&daemon)?;
    let engine = Engine::connect()?;
    if let Some(base) = &opts.base {
        if engine.inspect_image(base)?.is_none() {
            return Err(ImageError::BaseMissing(base.clone()));
        }
    }
    let context = build_context(bytes, opts.base.as_deref())
        .map_err(io_error("pack the build context with", &daemon))?;
    info!(tag = %opts.tag, daemon = %daemon.display(), "building the session image");
    let id = engine.build_image(context, &opts.tag, progress)?;
    Ok(Built {
        tag: opts.tag.clone(),
        id,
        base: opts.base.clone(),
        daemon,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE file with one PT_LOAD and optionally a PT_INTERP.
    fn elf(interp: Option<&str>) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        let phnum: u16 = if interp.is_some() { 2 } else { 1 };
        out[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let data_at = 64 + 56 * u64::from(phnum);
        let mut load = vec![0u8; 56];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        out.extend(load);
        if let Some(path) = interp {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&data_at.to_le_bytes());
            ph[32..40].copy_from_slice(&(path.len() as u64 + 1).to_le_bytes());
            out.extend(ph);
            out.extend(path.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn interpreter_is_found() {
        assert_eq!(elf_interpreter(&elf(None)), Ok(None));
        assert_eq!(
            elf_interpreter(&elf(Some("/lib64/ld-linux-x86-64.so.2"))),
            Ok(Some("/lib64/ld-linux-x86-64.so.2".to_owned()))
        );
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_interpreter(&elf(None)[..40]).is_err());
        let mut bad = elf(Some("/x"));
        bad.truncate(64 + 56 + 20);
        assert!(elf_interpreter(&bad).is_err());
    }

    #[test]
    fn static_check_on_real_binaries() {
        // This test binary is dynamically linked (the default for the gnu target).
        let exe = std::env::current_exe().unwrap();
        let err = check_static(&exe).unwrap_err();
        assert!(matches!(err, ImageError::NotStatic { .. }), "{err}");
        assert!(err.to_string().contains("crt-static"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("script");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = check_static(&script).unwrap_err().to_string();
        assert!(err.contains("not an ELF file"), "{err}");
        let fake = tmp.path().join("static");
        fs::write(&fake, elf(None)).unwrap();
        check_static(&fake).unwrap();
    }

    #[test]
    fn static_daemon_lookup() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let deps = target.join("debug").join("deps");
        fs::create_dir_all(&deps).unwrap();
        let exe = Some(deps.join("test-binary"));
        let want = target
            .join("x86_64-unknown-linux-gnu")
            .join("release")
            .join("sessionfsd");
        let msg = locate_static_daemon(None, exe.clone())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&want.display().to_string()), "{msg}");
        assert!(
            msg.contains("cargo build --release -p sessionfs-daemon"),
            "{msg}"
        );
        assert!(msg.contains("SESSIONFS_STATIC_DAEMON is not set"), "{msg}");
        fs::create_dir_all(want.parent().unwrap()).unwrap();
        fs::write(&want, "").unwrap();
        assert_eq!(locate_static_daemon(None, exe.clone()).unwrap(), want);
        let cli = Some(target.join("debug").join("sessionfs"));
        assert_eq!(locate_static_daemon(None, cli).unwrap(), want);
        let missing = tmp.path().join("nope");
        let msg = locate_static_daemon(Some(missing.clone().into()), exe)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!(
                "SESSIONFS_STATIC_DAEMON={} is not a file",
                missing.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn dockerfiles() {
        assert_eq!(
            dockerfile(None),
            "FROM scratch\nCOPY sessionfsd /sessionfsd\nCOPY workspace /workspace\n\
             LABEL sessionfs.image=1 sessionfs.version=0.1.0\nEXPOSE 7878/udp\n\
             ENTRYPOINT [\"/sessionfsd\"]\n"
        );
        let based = dockerfile(Some("debian:12"));
        assert!(based.starts_with("FROM debian:12\n"), "{based}");
        assert!(based.contains("\nUSER 0:0\n"), "{based}");
        assert!(based.contains("COPY sessionfsd /usr/local/bin/sessionfsd\n"));
        assert!(based.ends_with("ENTRYPOINT [\"/usr/local/bin/sessionfsd\"]\n"));
    }

    #[test]
    fn references() {
        for ok in [
            "sessionfs-session:latest",
            "reg.example/a/b:1.0",
            "x@sha256:ab",
        ] {
            check_reference(ok).unwrap();
        }
        for bad in ["", "a b", "a\nRUN x", "-x", "a;b"] {
            assert!(check_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn context_holds_exactly_three_entries() {
        let bytes = build_context(b"daemon".to_vec(), None).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("Dockerfile".to_owned(), 0o644),
                ("sessionfsd".to_owned(), 0o755),
                ("workspace/".to_owned(), 0o755),
            ]
        );
    }
}
