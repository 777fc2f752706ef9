//! `member run --metrics-addr`: two member processes on a SQLite file, each serving
//! Prometheus text; scraped over plain HTTP before, during and after a handover (the second
//! member joins and takes half, then leaves and gives it back), and the bad addresses refused.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

mod common;
use common::prometheus::{free_addr, scrape, value};
use common::{wait_until, MemberProc, MemberSpec, BIN};

const TTL: Duration = Duration::from_secs(2);
const GROUP: &str = "metrics";
const LIMIT: Duration = Duration::from_secs(20);

fn spawn(dir: &std::path::Path, store: &str, name: &str, addr: &str) -> Result<MemberProc> {
    common::spawn_member(
        &MemberSpec::new(dir, store, GROUP, name, TTL),
        &["--metrics-addr", addr, "--exec", "exec sleep 600"],
        common::tie_to_test,
    )
}

/// The value of series `name` of member `who` (more labels in `more`) at `addr`; `None` while
/// the series does not exist or the scrape fails.
fn read(addr: &str, name: &str, who: &str, more: &[(&str, &str)]) -> Option<f64> {
    let text = scrape(addr).ok()?;
    let mut want = vec![("group", GROUP), ("member", who)];
    want.extend_from_slice(more);
    value(&text, name, &want)
}

fn wait_value(addr: &str, name: &str, who: &str, want: f64) -> Result<()> {
    wait_until(
        &format!(
            "{name} of {who} = {want} (is {:?})",
            read(addr, name, who, &[])
        ),
        LIMIT,
        Duration::from_millis(50),
        || Ok(read(addr, name, who, &[]) == Some(want)),
    )
    .with_context(|| format!("last: {:?}", read(addr, name, who, &[])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_run_serves_metrics_that_follow_a_join_and_a_leave() -> Result<()> {
    let dir = common::temp_dir("rb-metrics", "join")?;
    let store = format!("sqlite://{}", dir.join("rb.db").display());
    common::create_group(&store, GROUP, &["r0", "r1", "r2", "r3"]).await?;
    let (addr_a, addr_b) = (free_addr()?, free_addr()?);

    let _a = spawn(&dir, &store, "a", &addr_a)?;
    wait_value(&addr_a, "rebalanser_leases_held", "a", 4.0)?;
    let read_a = |name: &str, more: &[(&str, &str)]| read(&addr_a, name, "a", more);
    assert_eq!(read_a("rebalanser_grants_total", &[]), Some(4.0));
    assert_eq!(
        read_a("rebalanser_session_state", &[("state", "joined")]),
        Some(1.0)
    );
    assert!(read_a("rebalanser_coordinator_epoch", &[]).is_some_and(|e| e > 0.0));
    let rebalances = read_a("rebalanser_rebalances_total", &[]).unwrap_or(0.0);
    assert!(rebalances >= 1.0);
    assert_eq!(read_a("rebalanser_resources_moved_total", &[]), Some(0.0));
    assert!(
        read_a(
            "rebalanser_store_op_seconds_count",
            &[("op", "open_session")]
        ) >= Some(1.0)
    );

    // b joins: two resources move from a to b.
    let mut b = spawn(&dir, &store, "b", &addr_b)?;
    wait_value(&addr_a, "rebalanser_leases_held", "a", 2.0)?;
    wait_value(&addr_b, "rebalanser_leases_held", "b", 2.0)?;
    let read_b = |name: &str, more: &[(&str, &str)]| read(&addr_b, name, "b", more);
    assert_eq!(read_a("rebalanser_grants_total", &[]), Some(4.0));
    assert_eq!(
        read_a("rebalanser_revokes_total", &[("reason", "reassigned")]),
        Some(2.0)
    );
    assert_eq!(read_b("rebalanser_grants_total", &[]), Some(2.0));
    // The joining member measured both handovers, a's stop and release included.
    assert_eq!(read_b("rebalanser_handover_seconds_count", &[]), Some(2.0));
    let waited = read_b("rebalanser_handover_seconds_sum", &[]).unwrap_or(0.0);
    assert!(
        waited > 0.0 && waited < 2.0 * TTL.as_secs_f64(),
        "{waited} s"
    );
    println!(
        "handover on the joining member: {:.1} ms each",
        waited * 500.0
    );
    assert!(read_a("rebalanser_rebalances_total", &[]) > Some(rebalances));
    assert_eq!(read_a("rebalanser_resources_moved_total", &[]), Some(2.0));
    assert_eq!(read_b("rebalanser_coordinator_epoch", &[]), Some(0.0));

    // b leaves (SIGTERM): its two come back to a.
    b.signal(libc::SIGTERM);
    let status = b.wait_exit(LIMIT)?;
    assert!(status.success(), "b: {status}");
    wait_value(&addr_a, "rebalanser_leases_held", "a", 4.0)?;
    assert_eq!(read_a("rebalanser_grants_total", &[]), Some(6.0));
    assert_eq!(read_a("rebalanser_handover_seconds_count", &[]), Some(6.0));
    // A keepalive every TTL/10: the first comes within this test's time.
    wait_until("a keepalive of a", LIMIT, Duration::from_millis(50), || {
        Ok(read_a("rebalanser_keepalive_seconds_count", &[]) >= Some(1.0))
    })?;
    assert!(
        read_a("rebalanser_store_op_seconds_count", &[("op", "keepalive")])
            >= read_a("rebalanser_keepalive_seconds_count", &[])
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn bad_and_busy_metrics_addresses_are_refused() -> Result<()> {
    let run = common::run_cli;
    let dir = common::temp_dir("rb-metrics", "bad")?;
    let db = format!("sqlite://{}", dir.join("x.db").display());
    let member = |addr: &'static str| {
        vec![
            "member",
            "run",
            "--store",
            &db,
            "--group",
            "g",
            "--metrics-addr",
            addr,
            "--exec",
            "true",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<String>>()
    };
    for bad in ["9464", "localhost", "127.0.0.1:port", "127.0.0.1:70000"] {
        let args = member(bad);
        let (code, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("--metrics-addr") && err.contains("HOST:PORT"),
            "{bad}: {err}"
        );
    }
    // A port in use: the member says so before it joins anything.
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = busy.local_addr()?.to_string();
    let args: Vec<String> = member("x")
        .into_iter()
        .map(|a| if a == "x" { addr.clone() } else { a })
        .collect();
    let (code, err) = run(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("--metrics-addr {addr}: cannot listen there")),
        "{err}"
    );
    // bench serves only the members it runs itself.
    let (code, err) = run(&["bench", "--store", &db, "--metrics-addr", "127.0.0.1:9"])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("memory:// only"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `bench --metrics-addr` on memory:// serves the series of the members it runs in-process,
/// while they run.
#[test]
fn bench_on_memory_serves_its_members_metrics() -> Result<()> {
    let addr = free_addr()?;
    let mut bench = Command::new(BIN)
        .args(["bench", "--members", "2", "--resources", "6", "--reps", "1"])
        .args([
            "--ttl",
            "1s",
            "--scenarios",
            "start,steady",
            "--steady-for",
            "5s",
        ])
        .args(["--metrics-addr", &addr, "--json"])
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // At rest in the steady scenario: both members hold three leases each.
    let held =
        |text: &str| ["m0", "m1"].map(|m| value(text, "rebalanser_leases_held", &[("member", m)]));
    let found = wait_until(
        "both members' leases",
        LIMIT,
        Duration::from_millis(50),
        || Ok(scrape(&addr).is_ok_and(|t| held(&t) == [Some(3.0), Some(3.0)])),
    );
    let last = scrape(&addr).unwrap_or_default();
    let status = bench.wait()?;
    found.with_context(|| format!("last scrape:\n{last}"))?;
    assert!(status.success(), "bench: {status}");
    assert_eq!(
        value(&last, "rebalanser_grants_total", &[]),
        Some(6.0),
        "{last}"
    );
    Ok(())
}
