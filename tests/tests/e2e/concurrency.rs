//! Concurrency: many threads on one session, and two sessions at once with no crosstalk.

#![forbid(unsafe_code)]

use std::fs;
use std::path::PathBuf;

use anyhow::Result;
use sessionfs_tests::Harness;

fn content(session: &str, thread: usize, file: usize) -> Vec<u8> {
    let line = format!("{session}:{thread}:{file}\n");
    line.repeat(1 + (thread * 31 + file * 17) % 4000)
        .into_bytes()
}

#[test]
fn many_threads_two_sessions_no_crosstalk() -> Result<()> {
    let mut h = Harness::new()?;
    let ws_a = h.create_session("alpha")?;
    let ws_b = h.create_session("beta")?;
    h.mount()?;
    let roots: Vec<(String, PathBuf)> = vec![
        ("alpha".into(), h.path("alpha", "")),
        ("beta".into(), h.path("beta", "")),
    ];
    const THREADS: usize = 8;
    const FILES: usize = 25;
    std::thread::scope(|scope| {
        for (session, root) in &roots {
            for t in 0..THREADS {
                let (session, root) = (session.clone(), root.clone());
                scope.spawn(move || {
                    let dir = root.join(format!("t{t}"));
                    fs::create_dir_all(&dir).unwrap();
                    for f in 0..FILES {
                        let p = dir.join(format!("f{f}"));
                        fs::write(&p, content(&session, t, f)).unwrap();
                        assert_eq!(
                            fs::read(&p).unwrap(),
                            content(&session, t, f),
                            "{}",
                            p.display()
                        );
                        if f % 5 == 4 {
                            fs::rename(&p, dir.join(format!("r{f}"))).unwrap();
                        }
                    }
                    let n = fs::read_dir(&dir).unwrap().count();
                    assert_eq!(n, FILES);
                });
            }
        }
    });
    // On disk, each workspace holds exactly its own files with its own content.
    for (session, ws) in [("alpha", &ws_a), ("beta", &ws_b)] {
        for t in 0..THREADS {
            for f in 0..FILES {
                let name = if f % 5 == 4 {
                    format!("r{f}")
                } else {
                    format!("f{f}")
                };
                let p = ws.join(format!("t{t}/{name}"));
                assert_eq!(fs::read(&p)?, content(session, t, f), "{}", p.display());
            }
            assert_eq!(fs::read_dir(ws.join(format!("t{t}")))?.count(), FILES);
        }
        assert_eq!(fs::read_dir(ws)?.count(), THREADS);
    }
    h.unmount()?;
    Ok(())
}
