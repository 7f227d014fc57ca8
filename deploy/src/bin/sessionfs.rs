//! `sessionfs`: the command line front end. Owns argument parsing, logging setup, and
//! printing; the commands themselves live in `sessionfs_deploy`.

#![forbid(unsafe_code)]
// The doc comments below are clap's `--help` text, where `<id>` is meant literally.
#![allow(rustdoc::invalid_html_tags)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sessionfs_deploy::{
    self as deploy, BuildOptions, Built, CreateOptions, DockerOptions, Home, KubeOptions,
    MountOptions, DEFAULT_MOUNTPOINT, DEFAULT_TAG,
};
use sessionfs_registry::Backend;

/// Manage sessionfs sessions and the FUSE bridge that shows them under /sessions/<id>.
///
/// Every session workspace is served by its own `sessionfsd` daemon over QUIC with mutual
/// TLS, as a local process or in a Docker container; `sessionfs mount` mounts all sessions
/// at once. State (CA, certificates, registry, daemon logs) lives in $SESSIONFS_HOME, by
/// default ~/.local/state/sessionfs.
///
/// Logs go to stderr; set SESSIONFS_LOG (e.g. `debug`, `sessionfs_deploy=trace`) to change
/// the level (default `warn`, `info` for `mount`).
#[derive(Parser, Debug)]
#[command(
    name = "sessionfs",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    /// State directory (overrides $SESSIONFS_HOME; default ~/.local/state/sessionfs).
    #[arg(long, global = true, value_name = "PATH")]
    home: Option<PathBuf>,
    /// Where the session registry is: sqlite:PATH (default: registry.db in the state directory),
    /// etcd://HOST:PORT[,HOST:PORT…] shared by several hosts, or
    /// etcds://HOST:PORT[,…]?ca=FILE[&cert=FILE&key=FILE] for TLS to etcd (the CA of etcd's
    /// certificate; a client certificate for an etcd started with --client-cert-auth).
    #[arg(long, global = true, value_name = "URL", env = "SESSIONFS_REGISTRY")]
    registry: Option<sessionfs_registry::Location>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, stop, start, remove, recreate and migrate sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Build the Docker image that docker sessions run.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Several hosts sharing one etcd registry: init, add, join, ls, rm, serve.
    ///
    /// Every host's `sessionfs mount` shows every session of every host. The host that makes the
    /// installation keeps its root key; each host issues its sessions' certificates with its own
    /// CA, constrained to its own names. See docs/deployment-hosts.md.
    #[command(subcommand)]
    Host(HostCommand),
    /// Mount the bridge: every session appears as a directory under MOUNTPOINT.
    ///
    /// Runs in the foreground until SIGINT/SIGTERM (then unmounts cleanly) or until
    /// unmounted with `sessionfs umount`. Sessions created or removed while mounted
    /// appear and disappear on their own.
    Mount(MountArgs),
    /// Unmount the bridge (with `fusermount3 -u`, or `umount` as root without fusermount3).
    Umount(UmountArgs),
    /// Serve the session tools over MCP (stdio, or streamable HTTP with --http).
    ///
    /// Tools: session_list, session_read_file, session_write_file, session_edit_file,
    /// session_search_replace, session_list_directory, session_file_exists, session_delete_file,
    /// session_create_directory, session_move_file, session_rename_file, session_grep_search.
    /// Every call names its session (sessionId) and works through the mount, whatever backend runs
    /// the session; paths leading outside the session's workspace are refused. Needs a running
    /// `sessionfs mount` at --mount. See docs/mcp.md.
    Mcp(McpArgs),
    /// Kubernetes: the manifests for `kubectl apply` (docs/deployment-kubernetes.md).
    #[command(subcommand)]
    K8s(K8sCommand),
}

#[derive(Subcommand, Debug)]
enum K8sCommand {
    /// Print the namespace, the bridge's ServiceAccount, Role and RoleBinding, the operators' Role
    /// and the DaemonSet that mounts every session on every node (deploy/kubernetes/sessionfs.yaml).
    Manifests {
        /// The namespace the objects go in.
        #[arg(long, value_name = "NS", default_value = "sessionfs")]
        namespace: String,
        /// The image with `sessionfs` and `fusermount3` that the DaemonSet runs.
        #[arg(long, value_name = "IMAGE", default_value = "sessionfs:latest")]
        image: String,
    },
}

#[derive(Args, Debug)]
struct McpArgs {
    /// Where the bridge is mounted (by `sessionfs mount`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MOUNTPOINT)]
    mount: PathBuf,
    /// Serve MCP over streamable HTTP at http://ADDR/mcp instead of stdio: PORT (on 127.0.0.1),
    /// IP:PORT or [IPv6]:PORT. Port 0 picks a free port (the address is printed on stderr).
    /// Clients must send `Authorization: Bearer <token>`: $SESSIONFS_MCP_TOKEN, or else the token
    /// in `$SESSIONFS_HOME/mcp-token` (made on first use, mode 0600).
    #[arg(long, value_name = "ADDR", value_parser = parse_http)]
    // This comment is `--help` text: `[IPv6]` is what to type, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    http: Option<std::net::SocketAddr>,
    /// Serve MCP over streamable HTTP on a Unix socket at PATH (made 0600) instead of stdio: only
    /// processes of this user (checked from the socket's peer credentials) are served, and no token
    /// is asked. Unlike a loopback port, other local users cannot even connect.
    #[arg(long, value_name = "PATH", conflicts_with = "http")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum HostCommand {
    /// Make this state directory the first host of a new installation in the etcd registry given
    /// with --registry (or SESSIONFS_REGISTRY).
    ///
    /// Keeps the installation's root CA here (the one this state directory has, or a new one),
    /// issues this host's CA under it, and records both in etcd. This host's local sessions then
    /// listen on ADDR, where the other hosts reach them.
    Init(HostInitArgs),
    /// Add a host (on the host that made the installation): write its join bundle to FILE.
    ///
    /// The bundle holds the new host's CA key (mode 0600): move it like a private key.
    Add(HostAddArgs),
    /// Join the installation with a bundle from `sessionfs host add`.
    ///
    /// From a state directory that is not a host yet (a fresh --home); the registry is the
    /// bundle's unless --registry is given.
    Join(HostJoinArgs),
    /// List the installation's hosts: address, liveness, number of sessions.
    ///
    /// A host is `live` while one of its `sessionfs mount` or `sessionfs host serve` processes
    /// keeps its etcd lease (10 s), `unreachable` otherwise, `added` until it joins.
    Ls(HostLsArgs),
    /// Remove a host from the installation; its sessions stay in the registry, `unreachable`.
    Rm(HostRmArgs),
    /// Keep this host live in the registry until SIGINT/SIGTERM, without mounting.
    ///
    /// For a host that serves sessions but mounts none (`sessionfs mount` does the same while
    /// mounted).
    Serve,
}

#[derive(Args, Debug)]
struct HostInitArgs {
    /// The address this host's sessions listen on (an IP address the other hosts reach).
    #[arg(long, value_name = "ADDR")]
    advertise: std::net::IpAddr,
    /// This host's name (default: $SESSIONFS_HOST_NAME, else the machine's host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Args, Debug)]
struct HostAddArgs {
    /// The new host's name: 1-63 characters a-z, 0-9 and '-'.
    name: String,
    /// Where to write the join bundle (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct HostJoinArgs {
    /// The join bundle from `sessionfs host add`.
    bundle: PathBuf,
    /// The address this host's sessions listen on (an IP address the other hosts reach).
    #[arg(long, value_name = "ADDR")]
    advertise: std::net::IpAddr,
}

#[derive(Args, Debug)]
struct HostLsArgs {
    /// Print a JSON array of {name, advertise, state, sessions, issuer, this}.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct HostRmArgs {
    /// The host to remove.
    name: String,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Build the session image from a statically linked sessionfsd, pulling nothing.
    ///
    /// Default: FROM scratch with the daemon at /sessionfsd and an empty /workspace. With
    /// --base, the daemon goes to /usr/local/bin/sessionfsd in that (local) image. The
    /// daemon comes from $SESSIONFS_STATIC_DAEMON, else from
    /// <target>/x86_64-unknown-linux-gnu/release/sessionfsd; build it with
    /// RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p sessionfs-daemon
    /// --target x86_64-unknown-linux-gnu. Prints `built image <tag> (<id>) …`.
    Build(ImageBuildArgs),
}

#[derive(Args, Debug)]
struct ImageBuildArgs {
    /// The image's tag.
    #[arg(long, default_value = DEFAULT_TAG)]
    tag: String,
    /// An image that exists locally to put the daemon into (e.g. one with a toolchain).
    #[arg(long, value_name = "IMAGE")]
    base: Option<String>,
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Create a session and start its daemon (a local process, or a Docker container).
    ///
    /// Issues the session's certificate, registers it, and starts `sessionfsd` serving the
    /// workspace: on a loopback UDP port (local), or in the container `sessionfs-<id>` with
    /// its port published on 127.0.0.1 (docker; the workspace is the volume
    /// `sessionfs-<id>` unless --volume or --workspace is given). Prints
    /// `created session <id> at <endpoint> serving <workspace>`.
    Create(Box<CreateArgs>),
    /// List sessions.
    ///
    /// A session recorded as running whose daemon process or container is not running shows
    /// as `dead` (`gone` if its container no longer exists).
    Ls(LsArgs),
    /// Stop a session's daemon (local: SIGTERM, then SIGKILL after 5 s; docker: stop the
    /// container); the session is kept.
    Stop(IdArg),
    /// Start the daemon (or container) of a stopped session again.
    Start(IdArg),
    /// Stop and remove a session: its registration, certificates and log (and its container).
    ///
    /// The workspace directory (or volume) is kept unless --purge is given; a docker
    /// session's --workspace directory is never deleted.
    Rm(RmArgs),
    /// Replace a docker session's container with a new one on the same workspace.
    ///
    /// Removes the container and creates a new one from the session's image (after
    /// `sessionfs image build`, the rebuilt one; or --image) on the same volume or host
    /// directory, with the same limits and environment; delivers the certificates, starts it
    /// and waits until it is ready. A running mount follows it at the same path. Prints
    /// `recreated session <id> at <endpoint> … from image <image>`.
    Recreate(RecreateArgs),
    /// Write a session's certificates for a container that sessionfs does not create.
    ///
    /// For docker compose or another orchestrator: issues the session's certificate from
    /// the installation CA (or reuses the one already issued) and writes ca.pem,
    /// session.pem and session.key (mode 0600) into DIR, to be mounted read-only at
    /// /run/sessionfs. A running container labelled sessionfs.session=<id> and
    /// sessionfs.adopt=1 is then adopted by `sessionfs mount`. Refuses an id registered
    /// with the local backend.
    Certs(CertsArgs),
    /// Move a session to the other backend (local → docker, docker → local), or to this host.
    ///
    /// Copies the workspace (into a new volume sessionfs-<id>, or a new directory, by default
    /// <state>/sessions/<id>/workspace-migrated), verifies the copy (paths, kinds, modes,
    /// sizes, SHA-256 of every file, symlink targets), then starts the session on the target,
    /// switches its registry entry and stops the source. The source data is kept unless
    /// --purge-source. Any failure rolls back: the session stays where it was, serving the
    /// same data. A running mount follows at the same path.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
struct MigrateArgs {
    /// Session id.
    id: String,
    /// The target backend: `local`, `docker` or `kubernetes`.
    #[arg(long, value_name = "BACKEND", value_parser = deploy::parse_backend,
          required_unless_present = "to_host")]
    to: Option<Backend>,
    /// Move the session from another host to this one (a local session here), copying its files
    /// daemon to daemon and verifying them; run it on the target host. The source host stops its
    /// daemon once it sees the move and keeps its data.
    #[arg(long, value_name = "HOST", conflicts_with_all = ["to", "image", "purge_source"])]
    to_host: Option<String>,
    /// --to docker, --to kubernetes: the session image (default: sessionfs-session:latest).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// --to local: the new workspace directory (must not exist, or be empty).
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// --to kubernetes: the namespace (default: the kubeconfig context's).
    #[arg(long, value_name = "NS", conflicts_with = "to_host")]
    namespace: Option<String>,
    /// --to kubernetes: the kubeconfig context (default: the current one).
    #[arg(long, value_name = "CTX", conflicts_with = "to_host")]
    context: Option<String>,
    /// After a successful migration, delete the source directory or volume.
    #[arg(long)]
    purge_source: bool,
}

#[derive(Args, Debug)]
struct CertsArgs {
    /// Session id.
    id: String,
    /// Directory to write the certificates into (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct RecreateArgs {
    /// Session id (a docker session).
    id: String,
    /// The image for the new container (default: the session's recorded image).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Session id: 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'.
    id: String,
    /// Where the daemon runs: `local` (a process here), `docker` (a container) or `kubernetes`
    /// (a pod, through the kubeconfig or the in-cluster configuration).
    #[arg(long, value_name = "BACKEND", default_value = "local", value_parser = deploy::parse_backend)]
    backend: Backend,
    /// Local: directory to serve (must exist); default: <state>/sessions/<id>/workspace.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Label KEY=VALUE to attach (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Owner UID:GID of new files in the workspace (the session's user); docker default 1000:1000,
    /// local default: the host user who creates them. See `mount --map-owner`.
    #[arg(long, value_name = "UID:GID", value_parser = deploy::parse_owner)]
    owner: Option<String>,
    /// Docker, Kubernetes: the session image (see `sessionfs image build`).
    #[arg(long, value_name = "IMAGE", help_heading = "Docker sessions")]
    image: Option<String>,
    /// Docker, Kubernetes: CPU limit, e.g. 1 or 0.5.
    #[arg(long, value_name = "N", value_parser = parse_cpus, help_heading = "Docker sessions")]
    cpus: Option<i64>,
    /// Docker, Kubernetes: memory limit, e.g. 512m or 2g.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, help_heading = "Docker sessions")]
    memory: Option<i64>,
    /// Docker: named volume for /workspace (created if missing); default sessionfs-<id>.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "workspace",
        help_heading = "Docker sessions"
    )]
    volume: Option<String>,
    /// Docker: host directory to bind-mount at /workspace instead of a volume.
    #[arg(long, value_name = "HOSTDIR", help_heading = "Docker sessions")]
    workspace: Option<PathBuf>,
    /// Docker: environment variable K=V for the container (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env, help_heading = "Docker sessions")]
    env: Vec<(String, String)>,
    /// Kubernetes: the namespace (default: the kubeconfig context's).
    #[arg(long, value_name = "NS", help_heading = "Kubernetes sessions")]
    namespace: Option<String>,
    /// Kubernetes: the kubeconfig context (default: the current one).
    #[arg(long, value_name = "CTX", help_heading = "Kubernetes sessions")]
    context: Option<String>,
    /// Kubernetes: the workspace claim's storage class (default: the cluster's).
    #[arg(long, value_name = "SC", help_heading = "Kubernetes sessions")]
    storage_class: Option<String>,
    /// Kubernetes: the workspace claim's size, e.g. 10Gi (the default).
    #[arg(long, value_name = "QUANTITY", help_heading = "Kubernetes sessions")]
    size: Option<String>,
    /// Kubernetes: a node label K=V the pod must run on (repeatable).
    #[arg(long = "node-selector", value_name = "K=V", value_parser = parse_label, help_heading = "Kubernetes sessions")]
    node_selector: Vec<(String, String)>,
    /// Kubernetes: how the mount reaches the daemon: `pod-ip` (the default; a mount in the
    /// cluster or on a node), `host-port:PORT` (a UDP port of the pod's node, from outside) or
    /// `node-port[:PORT]` (a NodePort Service of the session's, from outside).
    #[arg(long, value_name = "HOW", help_heading = "Kubernetes sessions")]
    reach: Option<deploy::Reach>,
    /// Kubernetes: where sessionfsd is in the image (default /sessionfsd, as `image build` makes it).
    #[arg(long, value_name = "PATH", help_heading = "Kubernetes sessions")]
    daemon_path: Option<String>,
    /// Kubernetes: instead of a pod of its own, add sessionfsd as a sidecar of the Deployment
    /// running POD, serving a volume of CONTAINER (the pod's only container by default).
    #[arg(
        long,
        value_name = "POD[/CONTAINER]",
        help_heading = "Kubernetes sessions"
    )]
    attach: Option<String>,
    /// Kubernetes, with --attach: the container's mount path of the volume to serve (default:
    /// its working directory's volume, or its only data volume).
    #[arg(
        long,
        value_name = "PATH",
        requires = "attach",
        help_heading = "Kubernetes sessions"
    )]
    workspace_path: Option<String>,
}

#[derive(Args, Debug)]
struct LsArgs {
    /// Print a JSON array of {id, backend, state, endpoint, workspace, pid, created_at,
    /// labels, alive, container, health}; `state` is the recorded state, `alive` whether the
    /// daemon process or container runs (null if unknown), `container` and `health` null for
    /// local sessions.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct IdArg {
    /// Session id.
    id: String,
}

#[derive(Args, Debug)]
struct RmArgs {
    /// Session id.
    id: String,
    /// Also delete the workspace directory (the default one, or the --dir given at create),
    /// or a docker session's volume.
    #[arg(long)]
    purge: bool,
    /// Only remove the registration and the state directory's files, without reaching the
    /// backend (for a session whose cluster, engine or context is gone); what may still run
    /// there is named and left alone.
    #[arg(long, conflicts_with = "purge")]
    forget: bool,
}

#[derive(Args, Debug)]
struct MountArgs {
    /// Where to mount (an existing, empty directory).
    #[arg(default_value = DEFAULT_MOUNTPOINT)]
    mountpoint: PathBuf,
    /// Upper bound in seconds for one file operation; a dead session fails within it.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    op_timeout: u64,
    /// FUSE worker threads.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Show each session's workspace owner (`session create --owner`) as you, and files you create
    /// or chown to yourself as that owner inside, like sshfs's idmap=user.
    #[arg(long)]
    map_owner: bool,
    /// Let other local users use the mount (FUSE allow_other; root, or user_allow_other in
    /// /etc/fuse.conf). Each file's mode then decides, as on a local disk, but the disk's directory
    /// permissions that hide a workspace (a private state directory) no longer do.
    #[arg(long)]
    allow_other: bool,
    /// Follow no symlink on the mount (readlink still works): a symlink planted in a session never
    /// leads a host process out of it. For sessions whose content you do not trust (containers);
    /// needs root.
    #[arg(long)]
    nosymfollow: bool,
}

#[derive(Args, Debug)]
struct UmountArgs {
    /// The mount point to unmount.
    #[arg(default_value = DEFAULT_MOUNTPOINT)]
    mountpoint: PathBuf,
}

fn parse_http(s: &str) -> Result<std::net::SocketAddr, String> {
    deploy::parse_http_addr(s).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    deploy::parse_label(s).map_err(|e| e.to_string())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    deploy::parse_env(s).map_err(|e| e.to_string())
}

fn parse_cpus(s: &str) -> Result<i64, String> {
    deploy::parse_cpus(s).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<i64, String> {
    deploy::parse_memory(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Mount(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SESSIONFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionfs: {}", describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = || Home::locate(cli.home.as_deref()).map(|h| h.with_registry(cli.registry.clone()));
    // A host of several is the host it joined as, whatever the environment says.
    // A host.json that cannot be read is an error, not a silent fallback to one host's registry.
    if let Some(membership) = home()?.membership()? {
        sessionfs_registry::set_this_host(&membership.name);
        // Its containers are reached by other hosts at its advertised address.
        deploy::set_publish_ip(membership.advertise);
    }
    match cli.command {
        Command::Host(HostCommand::Init(args)) => {
            println!(
                "{}",
                deploy::host_init(&home()?, args.name.as_deref(), args.advertise)?
            );
        }
        Command::Host(HostCommand::Add(args)) => {
            println!("{}", deploy::host_add(&home()?, &args.name, &args.out)?);
        }
        Command::Host(HostCommand::Join(args)) => {
            println!(
                "{}",
                deploy::host_join(&home()?, &args.bundle, args.advertise)?
            );
        }
        Command::Host(HostCommand::Ls(args)) => {
            let hosts = deploy::host_list(&home()?)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else {
                print!("{}", deploy::render_hosts(&hosts));
            }
        }
        Command::Host(HostCommand::Rm(args)) => {
            println!("{}", deploy::host_remove(&home()?, &args.name)?);
        }
        Command::Host(HostCommand::Serve) => {
            let home = home()?;
            home.membership()?.ok_or(deploy::HostError::NotAHost)?;
            let live = deploy::start_duties(&home)?.ok_or(deploy::HostError::NotAHost)?;
            eprintln!("keeping this host live; stop with SIGINT or SIGTERM");
            wait_for_termination()?;
            drop(live);
        }
        Command::Session(SessionCommand::Create(args)) => {
            let args = *args;
            let opts = CreateOptions {
                id: args.id,
                backend: args.backend,
                dir: args.dir,
                labels: args.labels,
                owner: args.owner,
                docker: DockerOptions {
                    image: args.image,
                    nano_cpus: args.cpus,
                    memory: args.memory,
                    volume: args.volume,
                    workspace: args.workspace,
                    env: args.env,
                },
                kubernetes: KubeOptions {
                    namespace: args.namespace,
                    context: args.context,
                    storage_class: args.storage_class,
                    size: args.size,
                    node_selector: args.node_selector,
                    reach: args.reach,
                    daemon_path: args.daemon_path,
                    attach: args.attach,
                    workspace_path: args.workspace_path,
                },
            };
            println!("{}", deploy::create(&home()?, &opts)?);
        }
        Command::Session(SessionCommand::Ls(args)) => {
            let home = home()?;
            let sessions = match deploy::list(&home) {
                Ok(sessions) => sessions,
                // A registry in etcd that cannot be reached: what this host's mount last saw,
                // said to be that, and a failure status all the same.
                Err(e) => match deploy::seen_sessions(&home)
                    .filter(|seen| seen.registry == home.registry_location().to_string())
                {
                    Some(seen) if deploy::registry_unreachable(&e) => {
                        let shown = deploy::render_seen(&seen);
                        if args.json {
                            print!("{}", deploy::render_json(&shown));
                        } else {
                            print!("{}", deploy::render_table(&shown));
                        }
                        anyhow::bail!(
                            "{e}\nabove: the sessions this host's mount (or host serve) last saw, {} s \
                             ago, from {}; a mount still running keeps serving them",
                            deploy::age_secs(seen.saved_at),
                            seen.registry
                        );
                    }
                    _ => return Err(e.into()),
                },
            };
            if args.json {
                print!("{}", deploy::render_json(&sessions));
            } else {
                print!("{}", deploy::render_table(&sessions));
            }
        }
        Command::Session(SessionCommand::Stop(args)) => {
            println!("{}", deploy::stop(&home()?, &args.id)?);
        }
        Command::Session(SessionCommand::Start(args)) => {
            println!("{}", deploy::start(&home()?, &args.id)?);
        }
        Command::Session(SessionCommand::Rm(args)) => {
            if args.forget {
                println!("{}", deploy::forget(&home()?, &args.id)?);
            } else {
                println!("{}", deploy::remove(&home()?, &args.id, args.purge)?);
            }
        }
        Command::Session(SessionCommand::Recreate(args)) => {
            println!(
                "{}",
                deploy::recreate(&home()?, &args.id, args.image.as_deref())?
            );
        }
        Command::Session(SessionCommand::Certs(args)) => {
            println!("{}", deploy::session_certs(&home()?, &args.id, &args.out)?);
        }
        Command::Session(SessionCommand::Migrate(args)) => {
            if let Some(to_host) = args.to_host {
                let opts = deploy::MoveOptions {
                    id: args.id,
                    to_host,
                    dir: args.dir,
                };
                println!("{}", deploy::migrate_to_host(&home()?, &opts)?);
                return Ok(());
            }
            let opts = deploy::MigrateOptions {
                id: args.id,
                to: args
                    .to
                    .ok_or_else(|| anyhow::anyhow!("--to or --to-host is needed"))?,
                image: args.image,
                dir: args.dir,
                purge_source: args.purge_source,
                namespace: args.namespace,
                context: args.context,
            };
            println!("{}", deploy::migrate(&home()?, &opts)?);
        }
        Command::Image(ImageCommand::Build(args)) => {
            let opts = BuildOptions {
                tag: args.tag,
                base: args.base,
                daemon: None,
            };
            println!("{}", build_image(&opts)?);
        }
        Command::Mount(args) => {
            let opts = MountOptions {
                mountpoint: args.mountpoint,
                op_timeout: Duration::from_secs(args.op_timeout),
                threads: usize::from(args.threads),
                map_owner: args.map_owner,
                allow_other: args.allow_other,
                nosymfollow: args.nosymfollow,
            };
            deploy::mount(&home()?, &opts)?;
        }
        Command::Umount(args) => {
            println!("{}", deploy::umount(&args.mountpoint)?);
        }
        Command::K8s(K8sCommand::Manifests { namespace, image }) => {
            print!("{}", deploy::k8s_manifests(&namespace, &image)?);
        }
        Command::Mcp(args) => {
            let opts = deploy::McpOptions {
                mount: args.mount,
                http: args.http,
                socket: args.socket,
                token: std::env::var("SESSIONFS_MCP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            };
            deploy::serve_mcp(home()?, &opts)?;
        }
    }
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(())
}

/// Builds the image, showing the engine's output: a spinner with the latest line on a
/// terminal (each build step also printed above it), plain lines on stderr otherwise.
fn build_image(opts: &BuildOptions) -> anyhow::Result<Built> {
    if !std::io::stderr().is_terminal() {
        return Ok(deploy::image_build(opts, &mut |line| eprintln!("{line}"))?);
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!("building {}", opts.tag));
    let result = deploy::image_build(opts, &mut |line| {
        if line.starts_with("Step ") {
            spinner.println(line);
        }
        spinner.set_message(line.to_owned());
    });
    spinner.finish_and_clear();
    Ok(result?)
}

/// The error and its causes joined with ": ", leaving out causes whose text the message
/// already contains (the library's messages usually include their cause).
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
