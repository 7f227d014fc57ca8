//! `sessionfs-fuzz`: runs a fuzz target over its corpus and mutated inputs; writes an input that
//! breaks it to `fuzz/artifacts/<target>/` and exits 1. `sessionfs-fuzz seeds` writes the seed
//! corpora. See `docs/testing.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sessionfs_fuzz::{corpus_dir, load_corpus, seeds, target, Fuzzer, TARGETS};

#[derive(Parser)]
#[command(about = "Fuzz sessionfs's input handling (stable Rust, no coverage feedback)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one target (or `all`, one after the other).
    Run {
        /// frame, dispatch, jsonrpc, edit, path or all.
        target: String,
        /// Inputs per target (the corpus included).
        #[arg(long, default_value_t = 100_000)]
        inputs: u64,
        /// Stop each target after this many seconds even if inputs remain.
        #[arg(long)]
        seconds: Option<u64>,
        /// Seed of the mutations (runs are reproducible).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Write every target's seed corpus into `fuzz/corpus/<target>/`.
    Seeds,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Seeds => {
            for name in TARGETS {
                let dir = corpus_dir(name);
                std::fs::create_dir_all(&dir)?;
                for (i, seed) in seeds(name).iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
                }
                println!("{name}: {} seeds in {}", seeds(name).len(), dir.display());
            }
            Ok(())
        }
        Command::Run {
            target: name,
            inputs,
            seconds,
            seed,
        } => {
            let names: Vec<&str> = if name == "all" {
                TARGETS.to_vec()
            } else {
                vec![name.as_str()]
            };
            for name in names {
                let mut t = target(name)?;
                let corpus = load_corpus(&corpus_dir(name))
                    .with_context(|| format!("the corpus of {name}"))?;
                let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
                let mut fuzzer = Fuzzer::new(corpus, seed);
                match fuzzer.run(t.as_mut(), inputs, until) {
                    Ok(stats) => println!(
                        "{name}: {} inputs in {:.1} s ({:.0}/s), no failure",
                        stats.inputs,
                        stats.elapsed.as_secs_f64(),
                        stats.inputs as f64 / stats.elapsed.as_secs_f64().max(1e-9)
                    ),
                    Err(crash) => {
                        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                            .join("artifacts")
                            .join(name);
                        std::fs::create_dir_all(&dir)?;
                        let hash = crash.input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                        });
                        let path = dir.join(format!("crash-{hash:016x}"));
                        std::fs::write(&path, &crash.input)?;
                        eprintln!(
                            "{name}: {} (input saved to {})",
                            crash.message,
                            path.display()
                        );
                        std::process::exit(1);
                    }
                }
            }
            Ok(())
        }
    }
}
