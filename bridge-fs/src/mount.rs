//! Mounting: build the client identity, follow the registry, run FUSE, unmount on a signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{MountOption, SessionACL};
use sessionfs_registry::Registry;
use tracing::{info, warn};

use crate::config::BridgeConfig;
use crate::fuse::BridgeFs;
use crate::session::Sessions;

/// How long an unmount may take to end the FUSE session before the bridge exits without it.
const UNMOUNT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the bridge could not mount or run.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("bridge certificates in {dir}: {source}")]
    Certificates {
        dir: PathBuf,
        source: sessionfs_pki::PkiError,
    },
    #[error("registry {location}: {source}")]
    Registry {
        location: sessionfs_registry::Location,
        source: sessionfs_registry::RegistryError,
    },
    #[error("cannot start the bridge runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot open the QUIC client socket: {0}")]
    Endpoint(std::io::Error),
    #[error("cannot mount at {mountpoint}: {source}")]
    Mount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set nosymfollow on the mount at {mountpoint} (it needs root): {source}; nothing is mounted")]
    NoSymFollow {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error("the FUSE session at {mountpoint} failed: {source}")]
    Session {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
}

/// Mounts the bridge at `mountpoint` and serves until SIGINT or SIGTERM (then unmounts) or until the
/// file system is unmounted from outside (`sessionfs umount`, `fusermount3 -u`).
pub fn mount(config: BridgeConfig, mountpoint: &Path) -> Result<(), MountError> {
    // One runtime thread for every session's protocol, QUIC and TLS work: per request it is little,
    // and with two threads the hand-offs between them cost more than it (a 10,000-file tar: bridge
    // CPU 14.1 → 10.4 s, 26.8 → 21.8 s). The FUSE loop, the invalidator and blocking calls have
    // their own threads. One thread bounds the bridge's encryption to about a core (~1 GiB/s).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sessionfs-bridge")
        .enable_all()
        .build()
        .map_err(MountError::Runtime)?;
    let _guard = rt.enter();

    let certs = |source| MountError::Certificates {
        dir: config.cert_dir.clone(),
        source,
    };
    let identity =
        sessionfs_pki::Identity::load(&config.cert_dir, sessionfs_pki::BRIDGE_FILES.stem)
            .map_err(certs)?;
    let roots = sessionfs_pki::load_ca_roots(&config.cert_dir.join(sessionfs_pki::CA_FILES.cert))
        .map_err(certs)?;
    let wide_area = sessionfs_pki::client_config(
        identity.clone(),
        roots.clone(),
        &sessionfs_pki::TransportTuning {
            wide_area: true,
            ..sessionfs_pki::TransportTuning::default()
        },
    )
    .map_err(certs)?;
    let client =
        sessionfs_pki::client_config(identity, roots, &sessionfs_pki::TransportTuning::default())
            .map_err(certs)?;
    let sessions =
        Arc::new(Sessions::new(&config, client, wide_area).map_err(MountError::Endpoint)?);

    let registry_err = |source| MountError::Registry {
        location: config.registry.clone(),
        source,
    };
    // The mount root must list the registry's sessions from the first request on, not from the
    // watcher's first tick.
    sessions.refresh().map_err(registry_err)?;
    let watched = sessions.clone();
    let watch = Registry::watch(&config.registry, config.registry_poll, move |records| {
        watched.update(records)
    })
    .map_err(registry_err)?;

    let fs = BridgeFs::new(
        rt.handle().clone(),
        sessions.clone(),
        config.attr_ttl,
        config.watched_ttl,
    );
    let handle = fs.clone();
    let mut options = vec![
        MountOption::FSName(sessionfs_mountinfo::FS_NAME.into()),
        MountOption::Subtype(sessionfs_mountinfo::FS_NAME.into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.push(MountOption::RW);
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.fuse_threads.max(1));
    fuse_config.clone_fd = true;
    // Signals are caught from before the mount exists: a SIGTERM right after it appears must unmount,
    // not kill the process and leave a dead mount behind.
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = rt.enter();
        (
            signal(SignalKind::terminate()).map_err(MountError::Runtime)?,
            signal(SignalKind::interrupt()).map_err(MountError::Runtime)?,
        )
    };
    let mut session =
        fuser::Session::new(fs, mountpoint, &fuse_config).map_err(|source| MountError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
    handle
        .start_invalidator(session.notifier())
        .map_err(MountError::Runtime)?;
    let mut unmounter = session.unmount_callable();
    info!(mountpoint = %mountpoint.display(), "mounted");

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let runner = std::thread::Builder::new()
        .name("sessionfs-fuse".into())
        .spawn(move || {
            let result = session.run();
            let _ = done_tx.send(());
            result
        })
        .map_err(MountError::Runtime)?;
    if config.nosymfollow {
        // From another thread than the FUSE loop's, which must be serving if the call asks the mount.
        let target = mountpoint.to_path_buf();
        let set = rt
            .block_on(rt.spawn_blocking(move || no_symlinks_followed(&target)))
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(source) = set {
            // Not served without the protection asked for.
            let _ = detach(mountpoint);
            drop(watch);
            sessions.close_all();
            return Err(MountError::NoSymFollow {
                mountpoint: mountpoint.to_path_buf(),
                source,
            });
        }
        info!(mountpoint = %mountpoint.display(), "symlinks are not followed on the mount");
    }
    let tuned = mountpoint.to_path_buf();
    rt.spawn_blocking(move || raise_readahead(&tuned));

    let unmounted_outside = rt.block_on(async {
        tokio::select! {
            _ = &mut done_rx => true,
            _ = int.recv() => false,
            _ = term.recv() => false,
        }
    });
    if !unmounted_outside {
        info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
        match unmounter.unmount() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Files are still open (or a shell sits inside). Detach the mount so the path is free,
                // and end the process: the kernel then fails what is still open with ENOTCONN.
                warn!(mountpoint = %mountpoint.display(), "mount busy; detaching it lazily");
                detach(mountpoint).map_err(|source| MountError::Session {
                    mountpoint: mountpoint.to_path_buf(),
                    source,
                })?;
                drop(watch);
                sessions.close_all();
                return Ok(());
            }
            Err(source) => {
                return Err(MountError::Session {
                    mountpoint: mountpoint.to_path_buf(),
                    source,
                })
            }
        }
        // Unprivileged unmounts go through `fusermount3 -u -z`, which detaches lazily and reports
        // success while files are still open; the FUSE loop then runs until they close. Do not wait
        // for that: the process ends, and what is still open fails with ENOTCONN.
        let finished = rt
            .block_on(tokio::time::timeout(UNMOUNT_GRACE, &mut done_rx))
            .is_ok();
        if !finished {
            warn!(mountpoint = %mountpoint.display(), "files still open after unmount; exiting anyway");
            drop(watch);
            sessions.close_all();
            return Ok(());
        }
    }
    let result = runner
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("FUSE thread panicked")));
    drop(watch);
    sessions.close_all();
    info!(mountpoint = %mountpoint.display(), "unmounted");
    result.map_err(|source| MountError::Session {
        mountpoint: mountpoint.to_path_buf(),
        source,
    })
}

/// The read-ahead window the bridge gives its mount: sequential reads then keep several 1 MiB
/// `READ`s in flight (a cold 1 GiB read: ~360 MiB/s at the kernel's 128 KiB, ~550 MiB/s at 4 MiB).
pub const READ_AHEAD_KIB: u64 = 4096;

/// Raises the mount's read-ahead to [`READ_AHEAD_KIB`]. The kernel caps `max_readahead` in `INIT`
/// at its default (128 KiB) and applies the smaller of the two after `INIT`, so the window is set
/// afterwards through the mount's backing device in sysfs. Needs root; otherwise the kernel's
/// default stays, which is correct, only slower.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    // A stat of the root waits until the kernel has processed INIT; the bridge answers it itself.
    let dev = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta.dev(),
        Err(e) => return warn!(mountpoint = %mountpoint.display(), "read-ahead not raised: {e}"),
    };
    let knob = PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    ));
    let current = std::fs::read_to_string(&knob)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if current.is_some_and(|kib| kib >= READ_AHEAD_KIB) {
        return;
    }
    match std::fs::write(&knob, READ_AHEAD_KIB.to_string()) {
        Ok(()) => {
            tracing::debug!(knob = %knob.display(), "read-ahead raised to {READ_AHEAD_KIB} KiB")
        }
        Err(e) => {
            tracing::debug!(knob = %knob.display(), "read-ahead stays at {current:?} KiB: {e}")
        }
    }
}

/// Lazily unmounts `mountpoint` (`MNT_DETACH`): directly as root, through `fusermount3 -uz` otherwise.
/// Sets `nosymfollow` on the mount at `mountpoint` (a bind remount, which changes only the mount's
/// own flags; the others it had are given again).
fn no_symlinks_followed(mountpoint: &Path) -> std::io::Result<()> {
    use rustix::mount::MountFlags;
    rustix::mount::mount_remount(
        mountpoint,
        MountFlags::BIND | MountFlags::NOSYMFOLLOW | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(Into::into)
}

fn detach(mountpoint: &Path) -> std::io::Result<()> {
    if rustix::process::geteuid().is_root() {
        return rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(Into::into);
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u -z failed: {status}"
        )))
    }
}
