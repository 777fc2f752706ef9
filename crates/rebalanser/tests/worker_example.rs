//! `examples/worker.rs` as a user runs it: a process on a SQLite store that takes every lease
//! of a group, and on SIGINT gives them back, leaves the group and exits 0.
//!
//! The example's source is compiled into this test binary (`include!`), which runs it as a
//! child process of itself: the code run is exactly the example's, and the test needs no
//! nested `cargo build` (which, with other feature sets than the workspace build's, would
//! rebuild half the dependency tree). No libtest harness (`harness = false` in Cargo.toml),
//! so the child gets the command line the example expects: `[STORE_URL [GROUP]]`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rebalanser::Admin;

mod worker {
    include!("../examples/worker.rs");

    pub fn run() -> Result<(), Error> {
        main()
    }
}

/// Set in the child's environment: run the example instead of the test.
const CHILD: &str = "REBALANSER_TEST_WORKER_CHILD";
const GROUP: &str = "jobs";
const RESOURCES: [&str; 4] = ["q1", "q2", "q3", "q4"];
/// Join, the initial settle delay (a tenth of the default 10 s TTL) and four grants take
/// about a second on an idle machine; generous for a loaded CI host.
const LIMIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return match worker::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    readme_shows_the_worker();
    println!("test readme_shows_the_worker ... ok");
    worker_serves_leases_and_leaves_on_sigint();
    println!("test worker_serves_leases_and_leaves_on_sigint ... ok");
    ExitCode::SUCCESS
}

/// README.md shows the example whole (the crate docs include the file itself).
fn readme_shows_the_worker() {
    let readme = include_str!("../../../README.md");
    let worker = include_str!("../examples/worker.rs");
    assert!(
        readme.contains(worker),
        "README.md's worker is not examples/worker.rs: copy the file into it again"
    );
}

/// Kills the child if the test fails before it exits.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker_serves_leases_and_leaves_on_sigint() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("worker.db").display());
    let admin = Admin::connect(&url, GROUP).expect("open the store");
    rt.block_on(async {
        admin.create_group().await.expect("create the group");
        admin
            .add_resources(&RESOURCES)
            .await
            .expect("add resources");
    });

    let exe = std::env::current_exe().expect("the test binary's path");
    let child = Command::new(exe)
        .args([url.as_str(), GROUP])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let mut child = Reap(child);
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.0.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    // Every resource served, and the store agrees: one member claims them all.
    let mut seen = Vec::new();
    let start = Instant::now();
    while !RESOURCES
        .iter()
        .all(|r| seen.contains(&format!("serving {r}")))
    {
        let left = LIMIT.saturating_sub(start.elapsed());
        match lines.recv_timeout(left) {
            // "serving q1 (token 7)": keep what names the resource.
            Ok(line) => seen.push(line.split(" (").next().unwrap_or("").to_string()),
            Err(e) => panic!("the worker served only {seen:?} after {LIMIT:?}: {e}"),
        }
    }
    let status = rt.block_on(admin.status()).expect("status");
    assert_eq!(status.members.len(), 1, "{status:?}");
    let claims: usize = status.claims_per_member().values().sum();
    assert_eq!(claims, RESOURCES.len(), "{status:?}");

    let pid = i32::try_from(child.0.id()).expect("a pid fits in pid_t");
    // SAFETY: kill(2) with a valid signal number; the pid is our own child, not yet reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let exit = loop {
        if let Some(exit) = child.0.try_wait().expect("wait for the worker") {
            break exit;
        }
        assert!(
            start.elapsed() < LIMIT * 2,
            "the worker did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "the worker exited with {exit}");
    // The child is gone, so its stdout is closed and the reader ends: this sees every line.
    let stopped: Vec<String> = lines.iter().collect();
    for r in RESOURCES {
        assert!(
            stopped.contains(&format!("stopped {r}")),
            "{r} not stopped: {stopped:?}"
        );
    }

    // The leave closed the session: no member, no claim left behind.
    let status = rt.block_on(admin.status()).expect("status");
    assert!(status.members.is_empty(), "{status:?}");
    assert!(
        status.resources.iter().all(|r| r.claim.is_none()),
        "{status:?}"
    );
}
