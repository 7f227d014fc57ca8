//! `sessionfs`: the command line front end. Owns argument parsing, logging setup, and
//! printing; the commands themselves live in `sessionfs_deploy::commands`.

// The doc comments below are clap's `--help` text, where `<id>` is meant literally.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sessionfs_deploy::commands::{self, CreateOptions, MountOptions};
use sessionfs_deploy::mounts::DEFAULT_MOUNTPOINT;
use sessionfs_deploy::state::Home;

/// Manage sessionfs sessions and the FUSE bridge that shows them under /sessions/<id>.
///
/// Every session workspace is served by its own `sessionfsd` daemon over QUIC with mutual
/// TLS; `sessionfs mount` mounts all sessions at once. State (CA, certificates, registry,
/// daemon logs) lives in $SESSIONFS_HOME, by default ~/.local/state/sessionfs.
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, stop, start and remove sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Mount the bridge: every session appears as a directory under MOUNTPOINT.
    ///
    /// Runs in the foreground until SIGINT/SIGTERM (then unmounts cleanly) or until
    /// unmounted with `sessionfs umount`. Sessions created or removed while mounted
    /// appear and disappear on their own.
    Mount(MountArgs),
    /// Unmount the bridge (with `fusermount3 -u`, or `umount` as root without fusermount3).
    Umount(UmountArgs),
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Create a local session and start its daemon.
    ///
    /// Issues the session's certificate, registers it, and starts `sessionfsd` serving the
    /// workspace on a loopback UDP port. Prints
    /// `created session <id> at <endpoint> serving <dir>`.
    Create(CreateArgs),
    /// List sessions.
    ///
    /// A local session recorded as running whose daemon process is gone shows as `dead`.
    Ls(LsArgs),
    /// Stop a session's daemon (SIGTERM, then SIGKILL after 5 s); the session is kept.
    Stop(IdArg),
    /// Start the daemon of a stopped session again.
    Start(IdArg),
    /// Stop and remove a session: its registration, certificates and log.
    ///
    /// The workspace directory is kept unless --purge is given.
    Rm(RmArgs),
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Session id: 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'.
    id: String,
    /// Directory to serve (must exist); default: <state>/sessions/<id>/workspace.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Label KEY=VALUE to attach (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Args, Debug)]
struct LsArgs {
    /// Print a JSON array of {id, backend, state, endpoint, workspace, pid, created_at,
    /// labels, alive}; `state` is the recorded state, `alive` whether a local daemon runs
    /// (null for other backends).
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
    /// Also delete the workspace directory (the default one, or the --dir given at create).
    #[arg(long)]
    purge: bool,
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
}

#[derive(Args, Debug)]
struct UmountArgs {
    /// The mount point to unmount.
    #[arg(default_value = DEFAULT_MOUNTPOINT)]
    mountpoint: PathBuf,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    commands::parse_label(s).map_err(|e| e.to_string())
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
    let home = || Home::locate(cli.home.as_deref());
    match cli.command {
        Command::Session(SessionCommand::Create(args)) => {
            let opts = CreateOptions {
                id: args.id,
                dir: args.dir,
                labels: args.labels,
            };
            println!("{}", commands::create(&home()?, &opts)?);
        }
        Command::Session(SessionCommand::Ls(args)) => {
            let sessions = commands::list(&home()?)?;
            if args.json {
                print!("{}", commands::render_json(&sessions));
            } else {
                print!("{}", commands::render_table(&sessions));
            }
        }
        Command::Session(SessionCommand::Stop(args)) => {
            println!("{}", commands::stop(&home()?, &args.id)?);
        }
        Command::Session(SessionCommand::Start(args)) => {
            println!("{}", commands::start(&home()?, &args.id)?);
        }
        Command::Session(SessionCommand::Rm(args)) => {
            println!("{}", commands::remove(&home()?, &args.id, args.purge)?);
        }
        Command::Mount(args) => {
            let opts = MountOptions {
                mountpoint: args.mountpoint,
                op_timeout: Duration::from_secs(args.op_timeout),
                threads: usize::from(args.threads),
            };
            commands::mount(&home()?, &opts)?;
        }
        Command::Umount(args) => {
            println!("{}", commands::umount(&args.mountpoint)?);
        }
    }
    Ok(())
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
