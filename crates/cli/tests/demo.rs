//! `rebalanser demo`: runs every step to the end with exit status 0, reports each handover, and
//! leaves no process and no temp dir behind, also when it is interrupted or killed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rebalanser"));
    c.arg("demo").args(args).env_remove("RUST_LOG");
    c
}

/// The temp dir, from the intro's `store:   sqlite:///TMP/demo.db` line.
fn temp_dir(stdout: &str) -> PathBuf {
    let url = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("store:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no store line in:\n{stdout}"));
    let db = url
        .strip_prefix("sqlite://")
        .unwrap_or_else(|| panic!("not a sqlite URL: {url}"));
    let dir = Path::new(db).parent().expect("the db's dir").to_path_buf();
    assert!(
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rebalanser-demo-")),
        "{}",
        dir.display()
    );
    dir
}

/// Member pids, from the `started m1 (pid N), ...` lines.
fn member_pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("started "))
        .flat_map(|l| l.split("(pid ").skip(1))
        .map(|p| {
            p.split(')')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad pid in {p:?}"))
        })
        .collect()
}

/// Live processes whose command line mentions `dir` (members, their commands), or that are
/// one of `pids` still running this binary.
fn leftovers(dir: &Path, pids: &[u32]) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&dir) || (pids.contains(&pid) && cmd.contains("rebalanser")) {
            found.push(format!("{pid}: {cmd}"));
        }
    }
    found
}

/// Waits (bounded) until nothing of the demo in `dir` runs any more.
fn assert_nothing_left(dir: &Path, pids: &[u32], within: Duration) {
    let end = Instant::now() + within;
    loop {
        let left = leftovers(dir, pids);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "processes left behind: {}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_demo_runs_every_step_reports_it_and_cleans_up() {
    let start = Instant::now();
    let out = demo(&["--members", "3", "--resources", "9", "--duration", "1s"])
        .output()
        .expect("run rebalanser demo");
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");

    // Each step: "=> step N settled in X.XX s: M moved ...".
    for n in 1..=5 {
        let prefix = format!("=> step {n} settled in ");
        let line = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no line for step {n}:\n{stdout}"));
        let (time, rest) = line.split_once(" s: ").expect("X s: M moved");
        let time: f64 = time.parse().expect("a handover time");
        assert!((0.0..60.0).contains(&time), "{line}");
        let moved: usize = rest
            .split(" moved")
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no moved count: {line}"));
        match n {
            // Nothing had an owner before the start; a killed member owned something.
            1 => assert_eq!(moved, 0, "{line}"),
            2 | 5 => assert!(moved > 0, "{line}"),
            _ => {}
        }
        if n == 1 {
            assert!(rest.contains("9 placed"), "{line}");
        }
        if n == 4 {
            assert!(rest.contains("3 placed, 2 removed"), "{line}");
        }
    }
    // The summary: a header, five rows, and the safety line.
    let summary = stdout
        .split_once("\nSummary\n")
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for n in 1..=5 {
        assert!(
            summary
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{n}. "))),
            "no summary row {n}:\n{summary}"
        );
    }
    assert!(
        summary.contains("No resource was ever claimed by two members"),
        "{summary}"
    );
    // The ownership timeline of the run, beside the (removed) temp dir: four members' leases,
    // the killed one's crash, no overlap.
    let page = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Ownership timeline: "))
        .and_then(|l| l.split(" (").next())
        .unwrap_or_else(|| panic!("no timeline line:\n{stdout}"));
    assert!(stdout.contains("of 4 members, no overlap)"), "{stdout}");
    let html = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{page}: {e}"));
    assert!(html.contains("crashed"), "no crash on the page {page}");
    let _ = std::fs::remove_file(page);

    // Nothing left: the members (3 + the one that joined), their commands, the temp dir.
    let dir = temp_dir(&stdout);
    let pids = member_pids(&stdout);
    assert_eq!(pids.len(), 4, "{stdout}");
    assert_nothing_left(&dir, &pids, Duration::ZERO);
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// Starts the demo and returns it once `marker` appeared on its stdout (and the output so far).
fn start_until(args: &[&str], marker: &str) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = demo(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rebalanser demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let end = Instant::now() + Duration::from_secs(30);
    while !seen.contains(marker) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no {marker:?} within 30 s:\n{seen}");
            }
        }
    }
    (child, seen, rx)
}

fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the demo did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interrupted_demo_stops_its_members_and_removes_its_temp_dir() {
    let (mut child, seen, _rx) = start_until(&["--duration", "5s"], "Step 2/5");
    let dir = temp_dir(&seen);
    let pids = member_pids(&seen);
    assert_eq!(pids.len(), 3, "{seen}");
    // SAFETY: kill(2) on the child we started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = wait_bounded(&mut child, Duration::from_secs(15));
    assert!(!status.success(), "an interrupted demo must not exit 0");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_nothing_left(&dir, &pids, Duration::ZERO);
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn a_killed_demo_takes_its_members_and_their_commands_with_it() {
    let (mut child, seen, _rx) = start_until(&["--duration", "5s"], "Step 2/5");
    let dir = temp_dir(&seen);
    let pids = member_pids(&seen);
    assert_eq!(pids.len(), 3, "{seen}");
    child.kill().expect("SIGKILL the demo");
    let _ = child.wait();
    // PR_SET_PDEATHSIG kills the members; their guards then kill the commands.
    assert_nothing_left(&dir, &pids, Duration::from_secs(5));
    // Nobody was left to remove the temp dir.
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_only_one_process_can_see_is_refused() {
    let out = demo(&["--store", "memory://demo"])
        .output()
        .expect("run rebalanser demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("separate processes"), "{stderr}");
}

/// `--store postgres://...`: the same story on a real PostgreSQL server, in a group of its own
/// that the demo deletes at the end.
#[test]
fn the_demo_runs_on_postgres() {
    let pg = rebalanser_testkit::Postgres::shared();
    let url = format!("{}?schema=demo_{}", pg.url(), std::process::id());
    let out = demo(&[
        "--store",
        &url,
        "--members",
        "3",
        "--resources",
        "9",
        "--duration",
        "0",
    ])
    .output()
    .expect("run rebalanser demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for n in 1..=5 {
        assert!(
            stdout.contains(&format!("=> step {n} settled in ")),
            "no line for step {n}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("No resource was ever claimed by two members"),
        "{stdout}"
    );
    // The demo's group is gone again.
    let left = pg
        .psql(&format!(
            "SELECT count(*) FROM demo_{}.kv",
            std::process::id()
        ))
        .expect("psql");
    assert_eq!(left, "0", "the demo left keys behind");
}
