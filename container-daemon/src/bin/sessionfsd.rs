//! `sessionfsd`: serve one session workspace over QUIC, or probe a running daemon (`--health`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sessionfs_daemon::{Daemon, DaemonConfig};

/// The sessionfs session daemon: serves one workspace directory over QUIC with mutual TLS.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The session this daemon serves (its certificate must name it).
    #[arg(long, env = "SESSIONFSD_SESSION_ID")]
    session_id: String,
    /// Directory holding ca.pem, session.pem and session.key.
    #[arg(long, env = "SESSIONFSD_CERT_DIR")]
    cert_dir: PathBuf,
    /// Workspace directory to serve.
    #[arg(long, env = "SESSIONFSD_ROOT", default_value = "/workspace")]
    root: PathBuf,
    /// UDP address to listen on.
    #[arg(long, env = "SESSIONFSD_LISTEN", default_value = "0.0.0.0:7878")]
    listen: SocketAddr,
    /// Give new files and directories this owner (UID:GID) instead of the calling host user, e.g. the
    /// unprivileged user of the session's container. A root-owned workspace root is given to it too.
    #[arg(long, env = "SESSIONFSD_OWNER")]
    owner: Option<sessionfs_daemon::Owner>,
    /// Probe a running daemon instead of serving: exit 0 if it answers a ping.
    #[arg(long)]
    health: bool,
    /// Address the health probe connects to (default: the loopback address of --listen's port).
    #[arg(long, requires = "health")]
    connect: Option<SocketAddr>,
    /// Seconds the health probe waits for an answer.
    #[arg(long, default_value_t = 5, requires = "health")]
    timeout: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SESSIONFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // An idle daemon should be small: a burst of requests runs on up to 64 blocking threads, and
    // glibc would give each its own heap arena, kept after the burst. One arena: after the same
    // workloads (a 10,000-file tar, find, rg, git status, 256 MiB written and read) a daemon with two
    // kept 1.0–1.6 MiB more (six paired playground runs, 10.5 against 9.2 MiB), and neither the tar
    // nor a cold rg was slower with one. Idle blocking threads end after a second.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // One runtime thread: a request is a few microseconds of work, and with two the hand-offs
    // between them (wake-ups, context switches) cost more than the work (a 10,000-file tar: daemon
    // CPU 16.5 → 13.7 s). File data, listings and syncs still run on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(64)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessionfsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.health {
        runtime.block_on(health(&args))
    } else {
        runtime.block_on(serve(&args))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionfsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let config = DaemonConfig {
        root: args.root.clone(),
        listen: args.listen,
        session_id: args.session_id.clone(),
        cert_dir: args.cert_dir.clone(),
        owner: args.owner,
    };
    let daemon = Daemon::bind(&config)?;
    let addr = daemon.local_addr().context("reading the bound address")?;
    // The one line on stdout: whoever started the daemon learns the bound port from it.
    println!("listening on {addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    daemon.run(shutdown).await;
    Ok(())
}

async fn health(args: &Args) -> anyhow::Result<()> {
    let addr = args.connect.unwrap_or_else(|| {
        let ip = if args.listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, args.listen.port())
    });
    let rtt = sessionfs_pki::health::probe(
        addr,
        &args.session_id,
        &args.cert_dir,
        None,
        Duration::from_secs(args.timeout),
    )
    .await
    .with_context(|| format!("session {} at {addr} is not healthy", args.session_id))?;
    println!(
        "healthy: session {} at {addr} answered in {} ms",
        args.session_id,
        rtt.as_millis()
    );
    Ok(())
}
