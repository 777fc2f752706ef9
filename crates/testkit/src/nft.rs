//! nftables rules that cut TCP connections between two local processes.
//!
//! Every test server listens on 127.0.0.1, so a partition cannot be made by address. It is made
//! by port 4-tuple instead, on the output hook (loopback packets pass it once, on the way out).
//! Each ensemble owns one table named after the test process, so parallel test processes never
//! touch each other's rules, and the tables of a test process that died are found and removed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use crate::spawn::pid_alive;

const PREFIX: &str = "rbtest_";

pub(crate) struct Table {
    name: String,
    installed: Mutex<bool>,
}

impl Table {
    pub(crate) fn new() -> Table {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Table {
            name: format!("{PREFIX}{}_{n}", std::process::id()),
            installed: Mutex::new(false),
        }
    }

    /// Drops new handshakes to and from `ports` and every packet of the connections in `conns`
    /// (each a pair of local ports, dropped in both directions).
    pub(crate) fn install(&self, ports: &[u16], conns: &BTreeSet<(u16, u16)>) -> Result<()> {
        let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        let t = &self.name;
        let set = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut script = String::new();
        let _ = writeln!(script, "add table inet {t}");
        let _ = writeln!(
            script,
            "add chain inet {t} out {{ type filter hook output priority 0 ; policy accept ; }}"
        );
        // A connection being set up while we listed sockets must not slip through: drop the
        // SYN-ACK as well as the SYN.
        let _ = writeln!(
            script,
            "add rule inet {t} out tcp dport {{ {set} }} tcp flags & syn == syn drop"
        );
        let _ = writeln!(
            script,
            "add rule inet {t} out tcp sport {{ {set} }} tcp flags & syn == syn drop"
        );
        push_conn_rules(&mut script, t, conns);
        nft_script(&script)?;
        *installed = true;
        Ok(())
    }

    pub(crate) fn add_connections(&self, conns: &BTreeSet<(u16, u16)>) -> Result<()> {
        let mut script = String::new();
        push_conn_rules(&mut script, &self.name, conns);
        nft_script(&script)
    }

    /// Deletes the table if it was installed; a no-op otherwise.
    pub(crate) fn remove(&self) -> Result<()> {
        let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        if *installed {
            nft_script(&format!("delete table inet {}\n", self.name))?;
            *installed = false;
        }
        Ok(())
    }
}

fn push_conn_rules(script: &mut String, t: &str, conns: &BTreeSet<(u16, u16)>) {
    for &(a, b) in conns {
        let _ = writeln!(
            script,
            "add rule inet {t} out tcp sport {a} tcp dport {b} drop"
        );
        let _ = writeln!(
            script,
            "add rule inet {t} out tcp sport {b} tcp dport {a} drop"
        );
    }
}

fn nft_command() -> Command {
    let mut cmd = Command::new("nft");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn not_found(e: std::io::Error, what: &str, package: &str) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("{what} is not installed: run apt-get install -y {package}")
    } else {
        anyhow!("cannot run {what}: {e}")
    }
}

fn nft_script(script: &str) -> Result<()> {
    let mut child = nft_command()
        .arg("-f")
        .arg("-")
        .spawn()
        .map_err(|e| not_found(e, "nft", "nftables"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed ({}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Deletes the tables left by test processes that died before dropping their ensemble: their
/// rules would silently drop traffic on ports that later tests reuse.
pub(crate) fn sweep_stale_tables() {
    let Ok(out) = nft_command()
        .args(["list", "tables", "inet"])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('_').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !pid_alive(pid)) {
            let _ = nft_script(&format!("delete table inet {name}\n"));
        }
    }
}

/// One TCP socket as `ss` shows it: local and peer ports (every test socket is on loopback) and
/// the pids holding it.
#[derive(Debug)]
struct Socket {
    local: u16,
    peer: u16,
    pids: Vec<u32>,
}

/// The connections between processes `a` and `b`, each as the pair (a's local port, b's local
/// port).
pub(crate) fn connections_between(a: u32, b: u32) -> Result<BTreeSet<(u16, u16)>> {
    let out = Command::new("ss")
        .args(["-tnpH"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| not_found(e, "ss", "iproute2"))?;
    if !out.status.success() {
        bail!(
            "ss failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("ss output is not UTF-8")?;
    let sockets: Vec<Socket> = text.lines().filter_map(parse_ss_line).collect();
    // Sockets of b by (local, peer), to find the other end of each socket of a.
    let of_b: BTreeSet<(u16, u16)> = sockets
        .iter()
        .filter(|s| s.pids.contains(&b))
        .map(|s| (s.local, s.peer))
        .collect();
    Ok(sockets
        .iter()
        .filter(|s| s.pids.contains(&a) && of_b.contains(&(s.peer, s.local)))
        .map(|s| (s.local, s.peer))
        .collect())
}

/// Parses `ESTAB 0 0 127.0.0.1:1234 127.0.0.1:5678 users:(("java",pid=42,fd=7))`.
fn parse_ss_line(line: &str) -> Option<Socket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 {
        return None;
    }
    let port = |ep: &str| ep.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    let pids = fields[5..]
        .join(" ")
        .split("pid=")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    Some(Socket {
        local: port(fields[3])?,
        peer: port(fields[4])?,
        pids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_lines() {
        let s = parse_ss_line(
            "ESTAB 0      0          127.0.0.1:41234      127.0.0.1:12345 users:((\"java\",pid=123,fd=45),(\"x\",pid=7,fd=1))",
        )
        .unwrap();
        assert_eq!((s.local, s.peer, s.pids), (41234, 12345, vec![123, 7]));
        let s = parse_ss_line("ESTAB 0 0 [::ffff:127.0.0.1]:2181 [::ffff:127.0.0.1]:5000 users:((\"java\",pid=9,fd=3))")
            .unwrap();
        assert_eq!((s.local, s.peer, s.pids), (2181, 5000, vec![9]));
        // TIME-WAIT sockets belong to no process.
        assert!(parse_ss_line("TIME-WAIT 0 0 127.0.0.1:1 127.0.0.1:2").is_none());
    }
}
