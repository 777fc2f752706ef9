//! Child processes that cannot outlive the test process.
//!
//! A server left running by a crashed or killed test keeps its ports and its CPU, and makes the
//! next run flaky in ways that are hard to trace back. `PR_SET_PDEATHSIG(SIGKILL)` has the kernel
//! kill the child when its parent dies, whatever the way the parent dies (panic, abort, SIGKILL).
//!
//! The catch: the "parent" the kernel watches is the *thread* that forked the child, not the
//! process. Cargo runs every test on its own thread, which exits when the test ends, so a server
//! spawned directly from a test would be killed as soon as that test returned, even when it is
//! meant to serve the whole process (`ZkEnsemble::shared`). So every child is forked by one helper
//! thread that lives as long as the process: its death is the process's death.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// The helper thread's inbox. The sender is never dropped (it lives in a static), so the thread's
/// `recv` loop never ends and the thread never exits before the process does.
static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("rbtest-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    // The requester blocks on the reply, so the send fails only if its thread
                    // is gone; the child is still tied to this thread and dies with the process.
                    let _ = req.reply.send(req.cmd.spawn());
                }
            })
            .expect("cannot start the rbtest-spawner thread");
        tx
    })
}

/// Spawns `cmd` so that it is SIGKILLed when the test process dies.
pub(crate) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: getpid is always safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would ever send
            // the signal, so refuse to exec.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent died before exec"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .send(SpawnRequest { cmd, reply: tx })
        .map_err(|_| io::Error::other("rbtest-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("rbtest-spawner thread dropped the request"))?
}

/// Whether a process exists and is not a zombie (a killed child of a dead parent may linger as a
/// zombie when PID 1 does not reap, and a zombie holds no ports).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(end) => !matches!(stat[end + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SIGKILLs the child in `slot`, if one runs, and reaps it: a crash, with no goodbye to peers or
/// clients. Does nothing when the slot is empty, so cleanup paths can call it freely.
pub(crate) fn kill_child(slot: &Mutex<Option<Child>>) -> io::Result<()> {
    let child = lock(slot).take();
    if let Some(mut child) = child {
        let _ = signal(child.id(), libc::SIGKILL);
        child.wait()?;
    }
    Ok(())
}

/// Removes the temp dirs named `{prefix}{pid}-...` whose test process is gone (SIGKILLed, or
/// holding a never-dropped `shared` server), so repeated runs do not fill /tmp.
pub(crate) fn sweep_stale_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fixture's state behind a mutex: a test that panicked while holding it leaves it usable
/// (it holds child processes).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last `lines` lines of a server's log (read from its last 16 KiB), for error messages.
pub(crate) fn tail(path: &std::path::Path, lines: usize) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a server fixture's `start` up to `attempts` times: parallel test processes pick free
/// ports independently and may collide, and a fresh set of ports fixes it.
pub(crate) fn start_with_retries<T>(
    attempts: usize,
    mut start: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..attempts {
        match start() {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}
