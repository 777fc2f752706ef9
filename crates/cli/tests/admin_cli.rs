//! `rebalanser resource add|remove|list`, `status`, `watch` as a user runs them: separate
//! processes against a real ZooKeeper server (one shared server, one chroot per test) and
//! against a SQLite file; members joined in this process through the library.

use std::io::{BufRead, BufReader};
use std::process::{Command as StdCommand, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use rebalanser::{Member, MemberBuilder, StopPolicy};
use rebalanser_testkit::ZkEnsemble;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rebalanser");
/// Failure bound for anything that takes a fraction of a second to a few seconds.
const LIMIT: Duration = Duration::from_secs(30);

fn cli() -> Command {
    let mut c = Command::new(BIN);
    // A developer's own defaults must not leak into the tests.
    c.env_remove("REBALANSER_STORE")
        .env_remove("REBALANSER_GROUP")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .timeout(LIMIT);
    c
}

fn run(args: &[&str]) -> Output {
    cli().args(args).output().expect("run rebalanser")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\nstdout: {}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// Runs a command that must fail with exactly one line on stderr starting `rebalanser: `, no
/// panic and no backtrace; returns that line.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run rebalanser");
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded: {}",
        text(&out.stdout)
    );
    let lower = err.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "{cmd:?}: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{cmd:?}: not one line: {err:?}");
    assert!(lines[0].starts_with("rebalanser: "), "{cmd:?}: {err:?}");
    lines[0].to_string()
}

fn fails_with(args: &[&str]) -> String {
    fails(cli().args(args))
}

fn zk_url(test: &str) -> String {
    let zk = ZkEnsemble::shared();
    format!(
        "zk://{}/cli-{test}-{}",
        zk.connect_string(),
        std::process::id()
    )
}

/// A SQLite store in a fresh temp dir (kept alive by the returned guard).
fn sqlite_url(test: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("rb-cli-{test}-"))
        .tempdir()
        .expect("temp dir");
    let url = format!("sqlite://{}/store.db", dir.path().display());
    (dir, url)
}

/// Two tests of one scenario (a `fn(&str)` taking a store URL): `$zk` runs it on a chroot of
/// the shared ZooKeeper server, `$sqlite` on a SQLite file; `$tag` names both stores.
macro_rules! on_zookeeper_and_sqlite {
    ($scenario:ident($tag:literal), $zk:ident, $sqlite:ident) => {
        #[test]
        fn $zk() {
            $scenario(&zk_url($tag));
        }

        #[test]
        fn $sqlite() {
            let (_dir, url) = sqlite_url($tag);
            $scenario(&url);
        }
    };
}

/// Timings that suit ZooKeeper (and SQLite) in tests.
fn fast(b: MemberBuilder, ttl: Duration) -> MemberBuilder {
    b.session_ttl(ttl)
        .safety_margin(ttl / 10)
        .stop_timeout(ttl / 10)
        .keepalive_interval(ttl / 10)
        .op_timeout(ttl / 4)
        .min_rebalance_interval(Duration::from_millis(20))
        .leave_timeout(Duration::from_secs(2))
        .on_stop_deadline_missed(StopPolicy::Log)
}

/// Joins a member that holds every lease it gets until it is revoked.
fn join(rt: &tokio::runtime::Runtime, url: &str, group: &str, name: &str) {
    let mut m = rt
        .block_on(
            fast(
                Member::builder(group).store_url(url),
                Duration::from_secs(2),
            )
            .name(name)
            .join(),
        )
        .unwrap_or_else(|e| panic!("{name} joins: {e}"));
    rt.spawn(async move {
        while let Some(lease) = m.next_lease().await {
            tokio::spawn(async move {
                lease.revoked().await;
                drop(lease);
            });
        }
    });
}

fn status_json(url: &str, group: &str) -> Value {
    let out = ok(&["status", "--store", url, "--group", group, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Polls `status --json` until `done` holds; returns the last document.
fn wait_status(url: &str, group: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let st = status_json(url, group);
        if done(&st) {
            return st;
        }
        assert!(
            start.elapsed() < LIMIT,
            "no {what} within {LIMIT:?}: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// help

#[test]
fn every_subcommand_help_has_an_example() {
    for args in [
        &["resource", "--help"][..],
        &["resource", "add", "--help"],
        &["resource", "remove", "--help"],
        &["resource", "list", "--help"],
        &["status", "--help"],
        &["status", "-h"],
        &["watch", "--help"],
        &["group", "--help"],
        &["group", "list", "--help"],
        &["group", "describe", "--help"],
        &["group", "delete", "--help"],
    ] {
        let out = ok(args);
        assert!(out.contains("Example"), "{args:?}: {out}");
    }
    // The JSON document is described in the long help.
    let out = ok(&["status", "--help"]);
    for key in [
        "\"format\"",
        "\"members\"",
        "\"resources\"",
        "\"handovers\"",
        "\"bad_keys\"",
    ] {
        assert!(out.contains(key), "status --help lacks {key}: {out}");
    }
}

// ---------------------------------------------------------------------------------------------
// errors

#[test]
fn bad_urls_are_one_line_errors() {
    for url in [
        "zk:/x",
        "foo://",
        "sqlite://",
        "memory://x",
        "nonsense",
        "zk://h",
    ] {
        for cmd in [
            &["status", "--store", url, "--group", "g"][..],
            &["resource", "list", "--store", url, "--group", "g"],
            &["resource", "add", "--store", url, "--group", "g", "q1"],
            &["watch", "--store", url, "--group", "g", "--once"],
        ] {
            let line = fails_with(cmd);
            // The URL is named, quoted.
            assert!(line.contains(&format!("{url:?}")), "{cmd:?}: {line}");
        }
    }
}

#[test]
fn an_unreachable_store_is_a_bounded_one_line_error() {
    let start = Instant::now();
    let line = fails_with(&["status", "--store", "zk://127.0.0.1:1/x", "--group", "g"]);
    let took = start.elapsed();
    assert!(line.contains("127.0.0.1:1"), "{line}");
    // The default --timeout is 5 s.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    let start = Instant::now();
    let unreachable = [
        "--store",
        "zk://127.0.0.1:1/x",
        "-g",
        "g",
        "--timeout",
        "1s",
    ];
    for cmd in [
        [&["resource", "add"][..], &unreachable, &["q"]].concat(),
        [&["resource", "list"][..], &unreachable].concat(),
        [&["watch"][..], &unreachable, &["--frames", "2"]].concat(),
    ] {
        fails_with(&cmd);
    }
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "took {:?}",
        start.elapsed()
    );
    // A SQLite file that cannot be created.
    let line = fails_with(&[
        "resource",
        "add",
        "--store",
        "sqlite:///nonexistent-dir/sub/x.db",
        "-g",
        "g",
        "q",
    ]);
    assert!(line.contains("nonexistent-dir"), "{line}");
}

#[test]
fn bad_durations_ids_and_arguments_are_one_line_errors() {
    let (_dir, url) = sqlite_url("args");
    for (flag, bad) in [
        ("--timeout", "5x"),
        ("--timeout", "5"),
        ("--timeout", "0s"),
        ("--timeout", "-1s"),
        ("--interval", "soon"),
        ("--interval", "1.2.3s"),
    ] {
        let mut args = vec!["watch", "--store", &url, "--group", "g", "--once"];
        args.extend([flag, bad]);
        let line = fails_with(&args);
        assert!(
            line.contains("invalid duration") && line.contains(flag) && line.contains(bad),
            "{line}"
        );
    }
    let long = "x".repeat(513);
    for (args, needle) in [
        (
            vec!["resource", "add", "--store", &url, "-g", "g", "ok", ""],
            "\"\"",
        ),
        (
            vec!["resource", "add", "--store", &url, "-g", "g", &long],
            "513 bytes",
        ),
        (
            vec!["resource", "remove", "--store", &url, "-g", "g", "a\tb"],
            "a\\tb",
        ),
        (
            vec!["resource", "add", "--store", &url, "-g", "g"],
            "no resource ids",
        ),
        (
            vec!["status", "--store", &url, "-g", ""],
            "group id is empty",
        ),
    ] {
        let line = fails_with(&args);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    // Nothing was written by the refused adds: the store file was never even created.
    let line = fails_with(&["resource", "list", "--store", &url, "-g", "g"]);
    assert!(line.contains("no such store file"), "{line}");
}

#[test]
fn a_missing_group_is_a_one_line_error() {
    let url = zk_url("missing");
    for cmd in [
        &["status", "--store", &url, "--group", "nope"][..],
        &["status", "--store", &url, "--group", "nope", "--json"],
        &["resource", "list", "--store", &url, "--group", "nope"],
        &[
            "resource", "remove", "--store", &url, "--group", "nope", "q",
        ],
        &[
            "resource",
            "add",
            "--store",
            &url,
            "--group",
            "nope",
            "--no-create",
            "q",
        ],
        &["watch", "--store", &url, "--group", "nope", "--once"],
    ] {
        let line = fails_with(cmd);
        assert!(
            line.contains("group nope does not exist"),
            "{cmd:?}: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// resources

/// Ids that need care: spaces, '/', Unicode, '#' inside, percent signs, dots.
const AWKWARD: [&str; 7] = [
    "plain",
    "with space",
    "a/b/c",
    "ünïcødé-日本",
    "x#y",
    "100%",
    "..",
];

fn round_trip(url: &str) {
    let g: &[&str] = &["--store", url, "--group", "jobs"];
    let add = |ids: &[&str]| {
        let out = cli()
            .args(["resource", "add"])
            .args(g)
            .args(ids)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    };
    let (out, err) = add(&AWKWARD);
    assert!(err.contains("created group jobs"), "{err}");
    assert_eq!(
        out,
        "added 7 resource(s) to group jobs (0 already present)\n"
    );
    let (out, err) = add(&["plain", "more"]);
    assert!(!err.contains("created group"), "{err}");
    assert_eq!(
        out,
        "added 1 resource(s) to group jobs (1 already present)\n"
    );

    let list = ok(&[&["resource", "list"][..], g].concat());
    let mut want: Vec<&str> = AWKWARD.iter().copied().chain(["more"]).collect();
    want.sort();
    assert_eq!(list.lines().collect::<Vec<_>>(), want);

    let json: Value =
        serde_json::from_str(&ok(&[&["resource", "list", "--json"][..], g].concat())).unwrap();
    assert_eq!(json["group"], "jobs");
    assert_eq!(strs(&json["resources"]), want);

    let out = ok(&[
        &["resource", "remove"][..],
        g,
        &["with space", "a/b/c", "absent"],
    ]
    .concat());
    assert_eq!(
        out,
        "removed 2 resource(s) from group jobs (1 not present)\n"
    );
    let list = ok(&[&["resource", "list"][..], g].concat());
    want.retain(|id| *id != "with space" && *id != "a/b/c");
    assert_eq!(list.lines().collect::<Vec<_>>(), want);
}

on_zookeeper_and_sqlite!(
    round_trip("round-trip"),
    resources_round_trip_on_zookeeper,
    resources_round_trip_on_sqlite
);

#[test]
fn resources_from_a_file_and_from_stdin() {
    let url = zk_url("from-file");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ids.txt");
    std::fs::write(
        &file,
        "# queues for the batch fleet\nq1\n\n   q2   \r\n  # an indented comment\nbucket/a b\nq1\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let g = ["--store", &url, "-g", "jobs"];
    let out = ok(&[&["resource", "add"][..], &g, &["--from-file", f, "extra"]].concat());
    assert_eq!(
        out,
        "added 4 resource(s) to group jobs (0 already present)\n"
    );
    let out = cli()
        .args(["resource", "add", "--store", &url, "-g", "jobs", "-f", "-"])
        .write_stdin("#x\nfrom-stdin\nq2\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "added 1 resource(s) to group jobs (1 already present)\n"
    );
    let list = ok(&["resource", "list", "--store", &url, "-g", "jobs"]);
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        ["bucket/a b", "extra", "from-stdin", "q1", "q2"]
    );
    // A bad id in a file names its line; nothing is written.
    std::fs::write(&file, "ok1\n\nbad\tid\n").unwrap();
    let line = fails_with(&["resource", "add", "--store", &url, "-g", "jobs", "-f", f]);
    assert!(line.contains("line 3 of"), "{line}");
    let list = ok(&["resource", "list", "--store", &url, "-g", "jobs"]);
    assert!(!list.contains("ok1"), "{list}");
    // A missing file.
    let line = fails_with(
        &[
            &["resource", "add"][..],
            &g,
            &["-f", "/nonexistent/ids.txt"],
        ]
        .concat(),
    );
    assert!(line.contains("/nonexistent/ids.txt"), "{line}");
    // Removal from a file.
    std::fs::write(&file, "q1\n# keep q2\nextra\n").unwrap();
    let out = ok(&["resource", "remove", "--store", &url, "-g", "jobs", "-f", f]);
    assert_eq!(
        out,
        "removed 2 resource(s) from group jobs (0 not present)\n"
    );
}

// ---------------------------------------------------------------------------------------------
// status

fn status_with_members(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    ok(&[
        "resource", "add", "--store", url, "-g", "jobs", "q1", "q2", "q 3", "q/4", "q5",
    ]);
    for name in ["worker-a", "worker-b"] {
        join(&rt, url, "jobs", name);
    }
    // Settled and balanced (settled alone may be seen before the second member gets a share).
    let st = wait_status(url, "jobs", "settled, balanced group of two", |st| {
        st["settled"] == true
            && st["members"].as_array().is_some_and(|m| {
                m.len() == 2 && m.iter().all(|m| m["claimed"].as_u64().unwrap_or(0) >= 2)
            })
    });
    assert_eq!(st["format"], 2);
    assert_eq!(st["group"], "jobs");
    let members: Vec<&str> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["worker-a", "worker-b"]);
    let coordinator = st["coordinator"]["member"].as_str().expect("a coordinator");
    assert!(members.contains(&coordinator), "{st:#}");
    assert_eq!(st["coordinator"]["epoch"], st["epoch"]);
    let coordinators = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["coordinator"] == true)
        .count();
    assert_eq!(coordinators, 1, "{st:#}");
    let resources = st["resources"].as_array().unwrap();
    let ids: Vec<&str> = resources
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q 3", "q/4", "q1", "q2", "q5"]);
    let mut per = std::collections::BTreeMap::new();
    for r in resources {
        let claim = &r["claim"];
        assert_eq!(claim["member"], r["assigned_to"], "{r:#}");
        assert_eq!(claim["session_registered"], true, "{r:#}");
        // One plain integer, as a string (it may exceed a JSON number's exact range).
        let token: u128 = claim["token"].as_str().unwrap().parse().unwrap();
        assert!(token > 0, "{r:#}");
        assert!(claim["session"].as_str().unwrap().starts_with('s'), "{r:#}");
        *per.entry(claim["member"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let counts: Vec<i32> = per.values().copied().collect();
    assert!(counts == [2, 3] || counts == [3, 2], "{per:?}");
    for m in st["members"].as_array().unwrap() {
        assert_eq!(m["claimed"], m["assigned"], "{m:#}");
        assert_eq!(m["weight"], 1);
        assert_eq!(m["draining"], false);
    }
    assert_eq!(st["handovers"], serde_json::json!([]));
    assert_eq!(st["bad_keys"], serde_json::json!([]));

    let text = ok(&["status", "--store", url, "--group", "jobs"]);
    for needle in [
        "group:       jobs",
        "coordinator: ",
        "state:       settled",
        "MEMBERS (2)",
        "NAME",
        "SESSION",
        "WEIGHT",
        "RESOURCES (5)",
        "ASSIGNED TO",
        "CLAIM HOLDER",
        "TOKEN",
        "HANDOVERS IN PROGRESS (0)",
        "BAD KEYS (0)",
        "worker-a",
        "worker-b",
        "coordinator",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // Each resource row shows its owner (assigned = claim holder here) and token.
    for r in resources {
        let id = r["id"].as_str().unwrap();
        let owner = r["claim"]["member"].as_str().unwrap();
        let token = r["claim"]["token"].as_str().unwrap().to_string();
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"));
        let cells: Vec<&str> = row[2 + id.len()..].split_whitespace().collect();
        assert_eq!(cells, [owner, owner, token.as_str()], "{row}");
    }

    // A removed resource goes through a handover to nobody, then disappears.
    ok(&["resource", "remove", "--store", url, "-g", "jobs", "q5"]);
    wait_status(url, "jobs", "q5 gone", |st| {
        st["settled"] == true && st["resources"].as_array().is_some_and(|r| r.len() == 4)
    });
    drop(rt);
}

on_zookeeper_and_sqlite!(
    status_with_members("status"),
    status_shows_members_owners_and_tokens_on_zookeeper,
    status_shows_members_owners_and_tokens_on_sqlite
);

// ---------------------------------------------------------------------------------------------
// watch

/// Starts `watch` with stdout piped; lines arrive on the channel.
fn spawn_watch(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = StdCommand::new(BIN)
        .arg("watch")
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Collects lines until one satisfies `until`.
fn read_until(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, until: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = until(&line);
                seen.push(line);
                if done {
                    return;
                }
            }
            Err(_) => panic!("watch output ended or stalled:\n{}", seen.join("\n")),
        }
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("watch did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn watch_marks_changes(url: &str) {
    ok(&["resource", "add", "--store", url, "-g", "jobs", "q1", "q2"]);
    let (mut child, rx) = spawn_watch(&[
        "--store",
        url,
        "-g",
        "jobs",
        "--frames",
        "2",
        "--interval",
        "100ms",
    ]);
    let mut seen = Vec::new();
    // Frame 1 ends with the BAD KEYS table.
    read_until(&rx, &mut seen, |l| l.starts_with("BAD KEYS"));
    ok(&["resource", "add", "--store", url, "-g", "jobs", "new one"]);
    let status = wait_exit(&mut child);
    seen.extend(rx.iter());
    let out = seen.join("\n");
    assert!(status.success(), "{out}");
    assert!(out.starts_with("--- frame 1 ("), "{out}");
    assert!(out.contains("\n--- frame 2 ("), "{out}");
    let frame2 = out.split("--- frame 2").nth(1).unwrap();
    for needle in [
        "RESOURCES (3)",
        "RESOURCE  ",
        "MEMBERS (0)",
        "changes:     new one added",
    ] {
        assert!(frame2.contains(needle), "no {needle:?} in frame 2:\n{out}");
    }
    // The new row is marked, the others are not.
    let row = |id: &str| {
        frame2
            .lines()
            .find(|l| l.trim_start_matches([' ', '*']).starts_with(id))
            .unwrap_or_else(|| panic!("no row {id}:\n{out}"))
            .to_string()
    };
    assert!(row("new one").starts_with("  * new one"), "{out}");
    assert!(row("q1").starts_with("    q1"), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no ANSI codes when not a terminal:\n{out}"
    );

    // --once: one frame, the table, exit 0.
    let out = ok(&["watch", "--store", url, "-g", "jobs", "--once"]);
    assert!(out.starts_with("--- frame 1 ("), "{out}");
    assert!(
        out.contains("RESOURCES (3)") && out.contains("new one"),
        "{out}"
    );
    assert!(!out.contains("frame 2"), "{out}");
}

on_zookeeper_and_sqlite!(
    watch_marks_changes("watch"),
    watch_draws_frames_and_marks_changes_on_zookeeper,
    watch_draws_frames_and_marks_changes_on_sqlite
);

/// Members joining show up as ownership changes: marked rows and a `claim` change.
#[test]
fn watch_marks_ownership_changes_when_members_join() {
    let url = zk_url("watch-join");
    ok(&[
        "resource", "add", "--store", &url, "-g", "jobs", "r1", "r2", "r3",
    ]);
    let (mut child, rx) = spawn_watch(&["--store", &url, "-g", "jobs", "--interval", "50ms"]);
    let mut seen = Vec::new();
    read_until(&rx, &mut seen, |l| l.starts_with("BAD KEYS"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    join(&rt, &url, "jobs", "w1");
    // Some frame shows r1 claimed by w1, marked.
    read_until(&rx, &mut seen, |l| {
        l.starts_with("  * r1") && l.split_whitespace().filter(|c| *c == "w1").count() == 2
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = seen.join("\n");
    assert!(out.contains("joined"), "{out}");
    assert!(out.contains("r1 claim -→w1 ("), "{out}");
    drop(rt);
}

/// `rabbitmq setup` declares the exchange and queues and makes them the group's resources (a
/// message published by key lands in one of them); `teardown` removes both. A bad AMQP URL and
/// an unreachable broker are one-line errors that never echo the password.
#[test]
fn rabbitmq_setup_and_teardown() {
    let broker = rebalanser_testkit::RabbitMq::start().expect("broker");
    let amqp = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("g.db").display());
    let base = [
        "--exchange",
        "orders",
        "--queues",
        "3",
        "--store",
        &store,
        "-g",
        "q",
    ];
    let out = ok(&[&["rabbitmq", "setup", "--amqp", &amqp][..], &base[..]].concat());
    assert!(out.contains("3 queues orders.0000..orders.0002"), "{out}");
    let listed = ok(&["resource", "list", "--store", &store, "-g", "q"]);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["orders.0000", "orders.0001", "orders.0002"]
    );
    // Idempotent.
    ok(&[&["rabbitmq", "setup", "--amqp", &amqp][..], &base[..]].concat());
    // The exchange routes by key onto the queues.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let p = rebalanser_rabbitmq::topology::Publisher::connect(&amqp, "orders", 3)
            .await
            .unwrap();
        p.publish("k1", b"x").await.unwrap();
        p.close().await;
    });
    let out = ok(&[&["rabbitmq", "teardown", "--amqp", &amqp][..], &base[..]].concat());
    assert!(out.contains("removed 3 queues"), "{out}");
    assert_eq!(ok(&["resource", "list", "--store", &store, "-g", "q"]), "");
    rt.block_on(async {
        let e = rebalanser_rabbitmq::topology::Publisher::connect(&amqp, "orders", 3)
            .await
            .unwrap()
            .publish("k1", b"x")
            .await;
        assert!(e.is_err(), "the exchange survived the teardown");
    });

    let line = fails_with(
        &[
            &[
                "rabbitmq",
                "setup",
                "--amqp",
                "amqp://bob:hunter2@h:notaport/%2f",
            ][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(
        line.contains("bad AMQP URL") && !line.contains("hunter2"),
        "{line}"
    );
    let line = fails_with(
        &[
            &[
                "rabbitmq",
                "setup",
                "--amqp",
                "amqp://bob:hunter2@127.0.0.1:1/%2f",
            ][..],
            &base[..],
        ]
        .concat(),
    );
    assert!(
        line.contains("cannot connect") && !line.contains("hunter2"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// environment defaults, groups, read-only opens

#[test]
fn store_and_group_come_from_the_environment_and_a_flag_wins() {
    let (dir, url) = sqlite_url("env");
    let other = format!("sqlite://{}/other.db", dir.path().display());
    let with_env = |args: &[&str]| {
        let mut c = cli();
        c.env("REBALANSER_STORE", &url)
            .env("REBALANSER_GROUP", "jobs")
            .args(args);
        c
    };
    let out = with_env(&["resource", "add", "q1", "q2"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The variables reached the store and the group the flags would have named.
    assert_eq!(
        ok(&["resource", "list", "--store", &url, "-g", "jobs"]),
        "q1\nq2\n"
    );
    let out = with_env(&["group", "describe", "--json"]).output().unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (doc["group"].as_str(), doc["resources"].as_u64()),
        (Some("jobs"), Some(2))
    );
    let out = with_env(&["group", "list", "--json"]).output().unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["groups"][0]["group"], "jobs", "{doc:#}");
    // A flag wins over its variable: --group, then --store (whose file does not exist: the
    // error names it, and it is not created).
    let line = fails(&mut with_env(&["status", "-g", "other"]));
    assert!(line.contains("group other does not exist"), "{line}");
    let line = fails(&mut with_env(&["resource", "list", "--store", &other]));
    assert!(line.contains("other.db"), "{line}");
    assert!(!dir.path().join("other.db").exists());
    // --help shows the variables.
    for args in [&["status", "--help"][..], &["group", "list", "--help"]] {
        let help = ok(args);
        assert!(help.contains("[env: REBALANSER_STORE"), "{args:?}: {help}");
    }
    assert!(ok(&["resource", "add", "--help"]).contains("[env: REBALANSER_GROUP"));
    let member_help = ok(&["member", "run", "--help"]);
    assert!(
        member_help.contains("[env: REBALANSER_STORE")
            && member_help.contains("[env: REBALANSER_GROUP")
    );
    // Neither given: the error names the flag and the variable (exit status 2).
    for (args, needles) in [
        (
            &["status"][..],
            &["--store", "REBALANSER_STORE", "--group", "REBALANSER_GROUP"][..],
        ),
        (
            &["status", "--store", url.as_str()],
            &["--group", "REBALANSER_GROUP"],
        ),
        (&["group", "list"], &["--store", "REBALANSER_STORE"]),
        (
            &["member", "run", "--group", "jobs", "--", "true"],
            &["--store", "REBALANSER_STORE"],
        ),
    ] {
        let out = run(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?} lacks {n}: {err}");
        }
    }
    let out = run(&["status", "--store", &url]);
    assert!(
        !text(&out.stderr).contains("REBALANSER_STORE"),
        "only what is missing is named"
    );
}

#[test]
fn group_list_describe_and_delete() {
    let (_dir, url) = sqlite_url("groups");
    let rt = tokio::runtime::Runtime::new().unwrap();
    ok(&[
        "group", "create", "--store", &url, "-g", "b-group", "--mode", "barrier",
    ]);
    ok(&["group", "delete", "--store", &url, "-g", "b-group"]);
    assert_eq!(
        ok(&["group", "list", "--store", &url]),
        "GROUPS (0)\n  (none)\n"
    );
    ok(&[
        "group", "create", "--store", &url, "-g", "b-group", "--mode", "barrier",
    ]);
    ok(&[
        "resource", "add", "--store", &url, "-g", "jobs", "q1", "q2", "q3",
    ]);
    join(&rt, &url, "jobs", "w1");
    wait_status(&url, "jobs", "settled", |st| st["settled"] == true);

    let listed = ok(&["group", "list", "--store", &url]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["b-group", "barrier", "0", "0", "-", "-"],
            vec!["jobs", "resource", "1", "3", "w1", "1"],
        ],
        "{listed}"
    );
    let doc: Value =
        serde_json::from_str(&ok(&["group", "list", "--store", &url, "--json"])).unwrap();
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["groups"][1]["members"], 1);
    assert_eq!(doc["groups"][1]["coordinator"], "w1");
    assert_eq!(doc["bad_keys"], serde_json::json!([]));

    let described = ok(&["group", "describe", "--store", &url, "-g", "jobs"]);
    for needle in [
        "group:       jobs",
        "mode:        resource",
        "generation:  0",
        "epoch:       1",
        "coordinator: w1 (epoch 1, session ",
        "members:     1 (0 draining)",
        "resources:   3 (3 claimed)",
        "state:       settled",
    ] {
        assert!(described.contains(needle), "no {needle:?} in:\n{described}");
    }
    let doc: Value = serde_json::from_str(&ok(&[
        "group", "describe", "--store", &url, "-g", "jobs", "--json",
    ]))
    .unwrap();
    assert_eq!(doc["claimed"], 3);
    assert_eq!(doc["coordinator"]["member"], "w1");
    assert_eq!(doc["settled"], true);

    // Refused while the member lives: exit 1, the group intact.
    let mut del = cli();
    del.args(["group", "delete", "--store", &url, "-g", "jobs"]);
    let out = del.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("group jobs is in use") && err.contains("stop every member"),
        "{err}"
    );
    assert_eq!(
        ok(&["resource", "list", "--store", &url, "-g", "jobs"])
            .lines()
            .count(),
        3
    );
    // Once the member is gone (its session expires), deleted.
    drop(rt);
    let start = Instant::now();
    loop {
        let out = run(&["group", "delete", "--store", &url, "-g", "jobs"]);
        if out.status.success() {
            assert!(text(&out.stdout).contains("deleted group jobs"));
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "not deleted: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = ok(&["group", "list", "--store", &url]);
    assert!(
        listed.contains("GROUPS (1)") && !listed.contains("jobs"),
        "{listed}"
    );
    let line = fails_with(&["group", "describe", "--store", &url, "-g", "jobs"]);
    assert!(line.contains("group jobs does not exist"), "{line}");
    let line = fails_with(&["group", "delete", "--store", &url, "-g", "jobs"]);
    assert!(line.contains("group jobs does not exist"), "{line}");

    // A key of no group at the store's root is reported, not fatal.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = rebalanser::open_store(&url).unwrap();
        store
            .execute(rebalanser::StoreOp::Txn {
                conds: vec![],
                writes: vec![rebalanser::Write::Put {
                    key: "not%zzagroup/x".into(),
                    value: b"1".to_vec(),
                }],
            })
            .await
            .unwrap();
    });
    let listed = ok(&["group", "list", "--store", &url]);
    assert!(
        listed.contains("b-group") && listed.contains("BAD KEYS (1)"),
        "{listed}"
    );
    assert!(listed.contains("not%zzagroup/x"), "{listed}");
}

/// The files of a directory with their sizes and modification times.
fn snapshot(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The commands that only look open the file read-only: they work where the user may only
/// read the file and its directory (run as `nobody` when the tests run as root, whom
/// permission bits do not stop), and leave every file as it was. A read-write open fails here:
/// it cannot take the write lock nor create the `-wal`/`-shm` files.
#[test]
fn read_only_commands_work_on_a_file_the_user_can_only_read() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let (dir, url) = sqlite_url("readonly");
    ok(&["resource", "add", "--store", &url, "-g", "jobs", "q1", "q2"]);
    let db = dir.path().join("store.db");
    let perms = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    perms(&db, 0o444);
    perms(dir.path(), 0o555);
    let before = snapshot(dir.path());
    assert_eq!(before.len(), 1, "only the database: {before:?}");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // `nobody` may not be able to reach the binary where cargo built it (a checkout in a
    // private directory, as CI's `mktemp -d` clone is): run a link to it, or a copy, from a
    // directory anyone can enter.
    let bin_dir = tempfile::Builder::new()
        .prefix("rb-readonly-bin")
        .tempdir()
        .unwrap();
    perms(bin_dir.path(), 0o755);
    let bin = bin_dir.path().join("rebalanser");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    perms(&bin, 0o755);
    let as_reader = |args: &[&str]| {
        let mut c = StdCommand::new(&bin);
        c.args(args).env_remove("RUST_LOG").env("NO_COLOR", "1");
        if root {
            c.uid(65534).gid(65534);
        }
        c.output().expect("run rebalanser")
    };
    for args in [
        &["status", "--store", &url, "-g", "jobs"][..],
        &["status", "--store", &url, "-g", "jobs", "--json"],
        &["watch", "--store", &url, "-g", "jobs", "--once"],
        &["resource", "list", "--store", &url, "-g", "jobs"],
        &["group", "list", "--store", &url],
        &["group", "describe", "--store", &url, "-g", "jobs"],
    ] {
        let out = as_reader(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!text(&out.stdout).is_empty(), "{args:?}");
    }
    assert!(
        text(&as_reader(&["resource", "list", "--store", &url, "-g", "jobs"]).stdout) == "q1\nq2\n"
    );
    // A write by the same user fails with a one-line error naming the file, nothing changed.
    let out = as_reader(&["resource", "remove", "--store", &url, "-g", "jobs", "q1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("store.db"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(dir.path()), before, "every file as it was");
    perms(dir.path(), 0o755);
    perms(&db, 0o644);
}

/// Only `group create`, `resource add` (without --no-create) and `rabbitmq setup` create a
/// store file; every other command refuses a missing one, naming its path, and creates
/// nothing.
#[test]
fn a_missing_store_file_is_never_created_by_commands_that_do_not_create_groups() {
    let (dir, _) = sqlite_url("nofile");
    let url = format!("sqlite://{}/typo.db", dir.path().display());
    for args in [
        &["status", "--store", &url, "-g", "jobs"][..],
        &["watch", "--store", &url, "-g", "jobs", "--once"],
        &["resource", "list", "--store", &url, "-g", "jobs"],
        &["resource", "remove", "--store", &url, "-g", "jobs", "q1"],
        &[
            "resource",
            "add",
            "--store",
            &url,
            "-g",
            "jobs",
            "--no-create",
            "q1",
        ],
        &["group", "list", "--store", &url],
        &["group", "describe", "--store", &url, "-g", "jobs"],
        &["group", "delete", "--store", &url, "-g", "jobs"],
        &["group", "bump-generation", "--store", &url, "-g", "jobs"],
    ] {
        let mut c = cli();
        c.args(args);
        let line = fails(&mut c);
        assert!(
            line.contains("no such store file") && line.contains("typo.db"),
            "{args:?}: {line}"
        );
        assert_eq!(c.output().unwrap().status.code(), Some(1), "{args:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{args:?} created a file"
        );
    }
    let out = run(&["member", "run", "--store", &url, "-g", "jobs", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no such store file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "member run created a file"
    );
    ok(&["group", "create", "--store", &url, "-g", "jobs"]);
    assert!(dir.path().join("typo.db").exists());
}

/// `group list` on ZooKeeper: one listing across the chroot's namespaces (one per group).
#[test]
fn group_list_on_zookeeper() {
    let url = zk_url("group-list");
    ok(&["group", "create", "--store", &url, "-g", "alpha"]);
    ok(&["resource", "add", "--store", &url, "-g", "beta/2", "q1"]);
    let doc: Value =
        serde_json::from_str(&ok(&["group", "list", "--store", &url, "--json"])).unwrap();
    let groups: Vec<(&str, u64)> = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap(),
                g["resources"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(groups, [("alpha", 0), ("beta/2", 1)], "{doc:#}");
    assert_eq!(doc["bad_keys"], serde_json::json!([]));
}
