//! The end-to-end suites, one module each, in one test binary: linking one binary instead of one per
//! suite saves most of the tests' build time. Every test's name starts with its suite's module, so a
//! suite runs on its own with `cargo nextest run -p sessionfs-tests -E 'test(/^coherence::/)'`.
//!
//! Each suite says what it proves in its own module documentation; `docs/testing.md` sums them up.

mod cluster;
mod coherence;
mod compose;
mod concurrency;
mod differential;
mod direct;
mod docker;
mod faults;
mod hardening;
mod hosts;
mod kubernetes;
mod mcp;
mod migrate;
mod ownership;
mod pjdfstest;
mod regressions;
mod security;
mod soak;
mod write_behind;
