//! The README's RabbitMQ example, run as a user would: two `rabbitmq-consumer` example
//! processes and the `rabbitmq-publisher` example on a real broker; every message is printed
//! by exactly one consumer, and Ctrl-C (SIGINT) makes each leave cleanly.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rebalanser::Admin;
use rebalanser_rabbitmq::topology;
use rebalanser_testkit::RabbitMq;

/// `cargo test` builds the examples next to the test binaries' directory.
fn example(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("no target directory")?;
    let path = dir.join("examples").join(name);
    if !path.exists() {
        bail!(
            "{} is not built (cargo test builds examples)",
            path.display()
        );
    }
    Ok(path)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs() -> Result<()> {
    let broker = RabbitMq::start()?;
    let amqp = broker.url();
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("orders.db").display());
    let queues = topology::setup(&amqp, "orders", 4).await?;
    let admin = Admin::connect(&store, "orders")?;
    admin.create_group().await?;
    admin.add_resources(&queues).await?;

    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let mut child = Command::new(example("rabbitmq-consumer")?)
            .args([&store, "orders", &amqp])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        consumers.push(Proc(child));
    }
    // Both joined before anything happens: Ctrl-C during a join is not the example's promise.
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.status().await?.members.len() < 2 {
        if Instant::now() > deadline {
            bail!("the two consumers did not join within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = Command::new(example("rabbitmq-publisher")?)
        .args([&amqp, "orders", "4", "20", "5"])
        .output()?;
    assert!(published.status.success(), "{published:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.lock().unwrap_or_else(|e| e.into_inner()).len() < 100 {
        if Instant::now() > deadline {
            bail!(
                "consumers printed {:?}",
                lines.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in &consumers {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(c.0.id() as libc::pid_t, libc::SIGINT) };
    }
    for mut c in consumers {
        let status = c.0.wait()?;
        assert!(
            status.success(),
            "a consumer exited with {status} on Ctrl-C"
        );
    }
    let lines = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let bodies: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split_once(": ").map(|(_, b)| b))
        .collect();
    assert_eq!(lines.len(), 100, "each message printed once: {lines:?}");
    assert_eq!(bodies.len(), 100);
    Ok(())
}
