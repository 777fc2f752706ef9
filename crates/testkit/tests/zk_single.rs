//! The standalone-server fixture: it starts, serves, survives the thread that started it, and
//! dies with its owner.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rebalanser_testkit::{pid_alive, ZkEnsemble};

fn wait_dead(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn single_server_serves_and_dies_on_drop() -> Result<()> {
    let t0 = Instant::now();
    let zk = ZkEnsemble::single()?;
    eprintln!("single server serving after {:?}", t0.elapsed());
    assert_eq!(zk.len(), 1);
    assert_eq!(zk.mode(0).as_deref(), Some("standalone"));
    assert!(zk.is_serving(0));
    assert!(zk.ruok(0));
    assert_eq!(zk.leader(), Some(0));
    assert_eq!(zk.connect_string(), zk.client_addr(0).to_string());
    let port = zk.client_addr(0).port();
    assert!(
        (10000..32000).contains(&port),
        "port {port} outside the test range"
    );
    let pid = zk.pid(0).context("no pid")?;
    assert!(pid_alive(pid));
    let addr = zk.client_addr(0);
    drop(zk);
    assert!(!pid_alive(pid), "java pid {pid} still alive after drop");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "{addr} still accepts after drop"
    );
    Ok(())
}

#[test]
fn pause_resume_and_restart_keep_the_data() -> Result<()> {
    let zk = ZkEnsemble::single()?;
    zk.zkcli(0, &["create", "/kept", "v1"])?;
    zk.pause(0)?;
    assert_eq!(zk.mode(0), None, "a SIGSTOPped server must not answer");
    assert!(!zk.ruok(0));
    zk.resume(0)?;
    zk.wait_serving(0, Duration::from_secs(5))?;
    let old = zk.pid(0).context("no pid")?;
    zk.kill(0)?;
    assert_eq!(zk.pid(0), None);
    assert!(!pid_alive(old));
    assert!(!zk.ruok(0));
    zk.restart(0)?;
    assert_ne!(zk.pid(0), Some(old));
    assert_eq!(zk.mode(0).as_deref(), Some("standalone"));
    let got = zk.zkcli(0, &["get", "/kept"])?;
    assert_eq!(got.trim(), "v1", "data lost across restart: {got:?}");
    Ok(())
}

#[test]
fn zkcli_creates_and_reads_back() -> Result<()> {
    let zk = ZkEnsemble::shared();
    let path = format!("/zkcli-{}", std::process::id());
    zk.zkcli(0, &["create", &path, "not json {"])?;
    let got = zk.zkcli(0, &["get", &path])?;
    assert_eq!(got.trim(), "not json {");
    let err = zk
        .zkcli(0, &["create", &path, "again"])
        .expect_err("second create must fail");
    assert!(
        format!("{err:#}").contains("already exists"),
        "unexpected error: {err:#}"
    );
    let children = zk.zkcli(0, &["ls", "/"])?;
    assert!(children.contains(&path[1..]), "{children:?}");
    // The shared server is the same one on every call.
    assert_eq!(ZkEnsemble::shared().connect_string(), zk.connect_string());
    Ok(())
}

/// The spawning thread exits at once; the server must live on, and die when the process is
/// SIGKILLed (no destructor runs then).
#[test]
fn server_outlives_its_starting_thread_and_dies_with_the_process() -> Result<()> {
    let mut probe = Command::new(env!("CARGO_BIN_EXE_rbtest-zk-probe"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(probe.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let Some((pid, addr)) = line
        .strip_prefix("pid ")
        .and_then(|r| r.trim().split_once(" addr "))
        .and_then(|(p, a)| {
            Some((
                p.parse::<u32>().ok()?,
                a.parse::<std::net::SocketAddr>().ok()?,
            ))
        })
    else {
        let _ = probe.kill();
        let out = probe.wait_with_output()?;
        bail!(
            "probe said {line:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    thread::sleep(Duration::from_millis(500));
    let alive = pid_alive(pid);
    let answers = std::net::TcpStream::connect(addr).is_ok();
    probe.kill()?; // SIGKILL
    probe.wait()?;
    assert!(
        alive && answers,
        "server died with the thread that started it"
    );
    assert!(
        wait_dead(pid, Duration::from_secs(5)),
        "java pid {pid} outlived its SIGKILLed test process"
    );
    Ok(())
}
