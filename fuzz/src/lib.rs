//! Fuzz targets for what sessionfs reads from others, and a mutation driver that runs them on stable
//! Rust.
//!
//! Targets ([`TARGETS`]), each a function of bytes that panics when an invariant breaks:
//! - `frame`: the protocol codec: every message type decodes or fails cleanly, and what decodes
//!   encodes back to itself; frame headers stay within the frame bound.
//! - `dispatch`: request frames through the daemon's request handling ([`sessionfs_daemon::dispatch`])
//!   on a temporary workspace: nothing panics, and nothing outside the workspace changes (a sentinel
//!   beside it is checked). Device nodes are left out (the daemon runs as root here).
//! - `jsonrpc`: the MCP stdio front's id scanner ([`sessionfs_mcp::IdScanner`]) against serde_json on
//!   the same message, fed whole and in pieces.
//! - `edit`: the marker merge and search-replace of the MCP edit tools: bounded results, and
//!   search-replace agreeing with `str::replace`.
//! - `path`: the protocol's path validation ([`sessionfs_proto::WirePath`]) and the MCP tools' path
//!   normalization ([`sessionfs_mcp::normalize_path`]): no accepted path climbs out.
//!
//! The driver ([`Fuzzer`]) mutates inputs from a seed corpus (`fuzz/corpus/<target>/`, written by
//! [`seeds`]): bit flips, interesting bytes and varints, insertions, deletions, duplications,
//! splices and dictionary tokens. It has no coverage feedback (stable Rust cannot instrument for
//! it); the seeds are valid messages of every kind, so mutations explore near them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod targets;

pub use targets::{seeds, target, Target, TARGETS};

/// Longest input the driver makes.
pub const MAX_INPUT: usize = 64 << 10;

/// Tokens the mutator inserts: the syntax the targets parse.
const DICTIONARY: &[&[u8]] = &[
    b"..",
    b"/",
    b"\n",
    b"\r\n",
    b"\0",
    b"// ... existing code ...\n",
    b"# ... existing code ...\n",
    b"\"id\":",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b"\"jsonrpc\":\"2.0\"",
    b"fn a() {\n",
    b"}\n",
    b"\xe2\x80\xa6",
    b"\x80\x01",
    b"\xff\xff\xff\xff\x0f",
];

/// A small, fast pseudo-random generator (xorshift64*): reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// An input that broke a target: the bytes and the panic's message.
#[derive(Debug)]
pub struct Crash {
    pub input: Vec<u8>,
    pub message: String,
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub inputs: u64,
    pub elapsed: Duration,
}

/// Mutates inputs from a corpus and runs a target on them.
pub struct Fuzzer {
    rng: Rng,
    corpus: Vec<Vec<u8>>,
}

impl Fuzzer {
    /// A fuzzer over `corpus` (the empty input is added), seeded with `seed`.
    pub fn new(mut corpus: Vec<Vec<u8>>, seed: u64) -> Fuzzer {
        corpus.push(Vec::new());
        Fuzzer {
            rng: Rng::new(seed),
            corpus,
        }
    }

    /// The next input: a corpus entry with one mutation (half the time, so most stay close to
    /// valid messages) or up to four.
    pub fn next_input(&mut self) -> Vec<u8> {
        let mut input = self.corpus[self.rng.below(self.corpus.len())].clone();
        let mutations = if self.rng.below(2) == 0 {
            1
        } else {
            1 + self.rng.below(4)
        };
        for _ in 0..mutations {
            self.mutate(&mut input);
        }
        input.truncate(MAX_INPUT);
        input
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
        match rng.below(10) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next_u64() as u8;
            }
            2 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = [0, 1, 0x7f, 0x80, 0xff, b'.', b'/', b'\n'][rng.below(8)];
            }
            3 => {
                let i = at(rng, input.len());
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(i..i, bytes);
            }
            4 if !input.is_empty() => {
                let i = rng.below(input.len());
                let n = 1 + rng.below((input.len() - i).min(16));
                input.drain(i..i + n);
            }
            5 if !input.is_empty() => {
                let i = rng.below(input.len());
                let n = 1 + rng.below((input.len() - i).min(64));
                let copy = input[i..i + n].to_vec();
                let j = at(rng, input.len());
                input.splice(j..j, copy);
            }
            6 => {
                let other = &self.corpus[rng.below(self.corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let piece = other[i..i + n].to_vec();
                    let j = at(rng, input.len());
                    input.splice(j..j, piece);
                }
            }
            7 if !input.is_empty() => {
                let n = rng.below(input.len());
                input.truncate(n);
            }
            _ => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                let i = at(rng, input.len());
                input.splice(i..i, token.iter().copied());
            }
        }
    }

    /// Runs `target` on `inputs` mutated inputs (or until `until`), after every corpus entry as
    /// is; stops at the first input that panics.
    pub fn run(
        &mut self,
        target: &mut dyn Target,
        inputs: u64,
        until: Option<Instant>,
    ) -> Result<Stats, Crash> {
        let start = Instant::now();
        let mut done = 0u64;
        for input in self.corpus.clone() {
            run_one(target, &input)?;
            done += 1;
        }
        while done < inputs && until.is_none_or(|t| Instant::now() < t) {
            let input = self.next_input();
            run_one(target, &input)?;
            done += 1;
        }
        target.finish();
        Ok(Stats {
            inputs: done,
            elapsed: start.elapsed(),
        })
    }
}

fn run_one(target: &mut dyn Target, input: &[u8]) -> Result<(), Crash> {
    catch_unwind(AssertUnwindSafe(|| target.run(input))).map_err(|panic| Crash {
        input: input.to_vec(),
        message: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".into()),
    })
}

/// The corpus directory of `target` in this repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Every file of `dir`, sorted by name.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    names.iter().map(std::fs::read).collect()
}
