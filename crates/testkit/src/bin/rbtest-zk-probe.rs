//! Helper process for the testkit's own tests (`tests/zk_single.rs`), not for other use.
//!
//! Whether a server dies with its test process can only be checked from outside that process:
//! this one starts a server from a short-lived thread (as a cargo test thread would be), prints
//! the server's pid, and waits to be killed.

use std::io::Write;
use std::time::Duration;

use rebalanser_testkit::ZkEnsemble;

fn main() {
    // If the test that runs us dies without killing us, we die too, and our server with us.
    // SAFETY: prctl with these arguments has no memory-safety preconditions.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let started = std::thread::spawn(ZkEnsemble::single)
        .join()
        .expect("starting thread panicked");
    let zk = match started {
        Ok(zk) => zk,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "pid {} addr {}",
        zk.pid(0).expect("running"),
        zk.client_addr(0)
    );
    let _ = out.flush();
    // Bounded, so a forgotten probe cannot run forever.
    std::thread::sleep(Duration::from_secs(60));
}
