//! The bounded fuzz run of the test suite: every target over its seed corpus and 100,000 mutated
//! inputs (a fixed seed, so a failure reproduces with `sessionfs-fuzz run <target> --seed 20
//! --inputs 100000`). The long runs are `sessionfs-fuzz run all --inputs 10000000`.

use sessionfs_fuzz::{corpus_dir, load_corpus, seeds, target, Fuzzer, TARGETS};

const INPUTS: u64 = 100_000;
const SEED: u64 = 20;

fn bounded(name: &str) {
    let corpus = load_corpus(&corpus_dir(name)).expect("the target's corpus");
    assert!(
        corpus.len() >= seeds(name).len(),
        "{name}: the corpus in the repository lacks seeds; run `sessionfs-fuzz seeds`"
    );
    let mut t = target(name).expect("a target");
    let stats = Fuzzer::new(corpus, SEED)
        .run(t.as_mut(), INPUTS, None)
        .unwrap_or_else(|crash| panic!("{name}: {} on input {:?}", crash.message, crash.input));
    assert_eq!(stats.inputs, INPUTS);
}

#[test]
fn every_target_has_a_test() {
    assert_eq!(TARGETS, ["frame", "dispatch", "jsonrpc", "edit", "path"]);
}

#[test]
fn frame() {
    bounded("frame");
}

#[test]
fn dispatch() {
    bounded("dispatch");
}

#[test]
fn jsonrpc() {
    bounded("jsonrpc");
}

#[test]
fn edit() {
    bounded("edit");
}

#[test]
fn path() {
    bounded("path");
}
