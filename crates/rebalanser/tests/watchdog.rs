//! The stop-deadline watchdog (PITFALLS 7): with the default `StopPolicy::Abort`, a process
//! whose executor is blocked while the application holds a lease is aborted by the watchdog
//! thread at the lease deadline — the driver cannot act, so only the watchdog can.
//!
//! Each scenario runs in a child process (this test binary re-executed), since the expected
//! outcome is the child's death by SIGABRT.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rebalanser::{Admin, Member};

const CHILD: &str = "REBALANSER_WATCHDOG_CHILD";
/// Linux's signal number for abort().
const SIGABRT: i32 = 6;

/// Runs this test binary's `name` test in a child with `CHILD=scenario`.
fn child(name: &str, scenario: &str) -> (std::process::ExitStatus, Duration, String) {
    let start = Instant::now();
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .output()
        .expect("run child");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, start.elapsed(), text)
}

/// The child: join with a 1 s TTL, take the lease, then block the only executor thread for
/// 4 s while holding it (or after releasing it).
fn scenario(release_first: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = "memory://watchdog";
        let admin = Admin::connect(url, "g").expect("admin");
        admin.create_group().await.expect("group");
        admin.add_resources(&["r"]).await.expect("add");
        let mut m = Member::builder("g")
            .name("m")
            .store_url(url)
            .session_ttl(Duration::from_millis(1000))
            .safety_margin(Duration::from_millis(100))
            .stop_timeout(Duration::from_millis(200))
            .keepalive_interval(Duration::from_millis(100))
            .op_timeout(Duration::from_millis(100))
            .join()
            .await
            .expect("join");
        let lease = m.next_lease().await.expect("lease");
        println!(
            "child: holding {} for {:?}",
            lease.resource(),
            lease.remaining()
        );
        if release_first {
            drop(lease);
            std::thread::sleep(Duration::from_millis(4000));
            println!("child: survived");
        } else {
            // Blocks the executor: no keepalive, no revoke, no driver.
            std::thread::sleep(Duration::from_millis(4000));
            println!("child: survived while holding {}", lease.resource());
        }
    });
}

#[test]
fn blocked_executor_holding_a_lease_is_aborted_at_the_deadline() {
    match std::env::var(CHILD).as_deref() {
        Ok("hold") => return scenario(false),
        Ok(_) => return,
        Err(_) => {}
    }
    let (status, took, out) = child(
        "blocked_executor_holding_a_lease_is_aborted_at_the_deadline",
        "hold",
    );
    assert_eq!(status.signal(), Some(SIGABRT), "{status:?}\n{out}");
    assert!(!out.contains("survived"), "{out}");
    assert!(out.contains("past its deadline"), "{out}");
    // Aborted around the 1 s deadline, well before the 4 s block ended.
    assert!(took < Duration::from_millis(3500), "took {took:?}\n{out}");
}

#[test]
fn a_released_lease_is_not_a_reason_to_abort() {
    match std::env::var(CHILD).as_deref() {
        Ok("release") => return scenario(true),
        Ok(_) => return,
        Err(_) => {}
    }
    let (status, _, out) = child("a_released_lease_is_not_a_reason_to_abort", "release");
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("child: survived"), "{out}");
}
