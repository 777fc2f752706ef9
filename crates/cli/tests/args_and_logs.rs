//! What every subcommand does with arguments that are not UTF-8, and when its log lines on
//! stderr carry colour codes.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read as _;
use std::os::fd::FromRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

const BIN: &str = env!("CARGO_BIN_EXE_rebalanser");

fn os(s: &str) -> OsString {
    OsString::from(s)
}

/// `b` as an argument, any bytes.
fn raw(b: &[u8]) -> OsString {
    OsStr::from_bytes(b).to_os_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmpdir(name: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "rb-args-logs-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Any argument that is not UTF-8, anywhere a string is expected, in any subcommand: one line
/// on stderr naming it (as Rust escapes it, `\xFF`), exit code 2 as for clap's usage errors,
/// no panic. Arguments after `member run ... --` are the child's argv and may be any bytes.
#[test]
fn non_utf8_arguments_are_a_one_line_usage_error_naming_them() -> Result<()> {
    let dir = tmpdir("utf8")?;
    let db = format!("sqlite://{}", dir.join("none.db").display());
    let ff = || raw(b"\xff");
    let store_ok = || os(&db);
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        (
            vec![os("status"), os("--store"), ff(), os("-g"), os("g")],
            "--store",
        ),
        (
            vec![os("status"), raw(b"--store=\xff"), os("-g"), os("g")],
            "--store",
        ),
        (
            vec![os("status"), os("--store"), store_ok(), os("-g"), ff()],
            "-g",
        ),
        (
            vec![
                os("resource"),
                os("add"),
                os("--store"),
                store_ok(),
                os("-g"),
                os("g"),
                raw(b"a\xffb"),
            ],
            "a\\xFFb",
        ),
        (
            vec![
                os("resource"),
                os("list"),
                os("--store"),
                ff(),
                os("-g"),
                os("g"),
            ],
            "--store",
        ),
        (
            vec![
                os("resource"),
                os("remove"),
                os("--store"),
                store_ok(),
                os("-g"),
                os("g"),
                ff(),
            ],
            "\\xFF",
        ),
        (
            vec![os("watch"), os("--store"), ff(), os("-g"), os("g")],
            "--store",
        ),
        (
            vec![
                os("member"),
                os("run"),
                os("--store"),
                ff(),
                os("-g"),
                os("g"),
                os("--exec"),
                os("true"),
            ],
            "--store",
        ),
        (
            vec![
                os("member"),
                os("run"),
                os("--store"),
                store_ok(),
                os("-g"),
                os("g"),
                os("--exec"),
                ff(),
            ],
            "--exec",
        ),
        (vec![os("demo"), os("--store"), ff()], "--store"),
        (vec![os("sim"), os("--seeds"), ff()], "--seeds"),
        (vec![os("--log-format"), ff(), os("status")], "--log-format"),
        (vec![ff()], "\\xFF"),
        (vec![os("status"), ff()], "\\xFF"),
    ];
    for (args, names) in cases {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .output()?;
        let err = text(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!err.contains("panicked"), "{args:?}: panicked:\n{err}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{err}");
        assert!(
            err.contains("UTF-8") && err.contains("\\xFF") && err.contains(names),
            "{args:?}: does not name the argument ({names}): {err}"
        );
    }
    // The child's argv is passed as bytes: the member gets as far as the store.
    let out = Command::new(BIN)
        .args([
            os("member"),
            os("run"),
            os("--store"),
            store_ok(),
            os("-g"),
            os("g"),
        ])
        .args([os("--"), os("true"), ff()])
        .env("RUST_LOG", "off")
        .output()?;
    let err = text(&out.stderr);
    assert!(
        out.status.code() == Some(2)
            && err.contains("no such store file")
            && !err.contains("UTF-8"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A command that logs at the default level: `resource add` creating the SQLite file `db`.
fn logging_command(db: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["resource", "add", "--store"])
        .arg(format!("sqlite://{}", db.display()))
        .args(["-g", "g", "r1"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    c
}

const LOGGED: &str = "creating a Rebalanser database";

/// Logs into a pipe (a file, a journal, a CI log) carry no escape codes.
#[test]
fn logs_into_a_pipe_have_no_colour_codes() -> Result<()> {
    let dir = tmpdir("pipe")?;
    let out: Output = logging_command(&dir.join("rb.db")).output()?;
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(LOGGED), "the command logged nothing: {err:?}");
    assert!(!err.contains("\x1b["), "colour codes in a pipe: {err:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `c` with stderr on a new pseudo-terminal; returns what it wrote there.
fn stderr_on_a_terminal(mut c: Command) -> Result<String> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r with a valid buffer; each result
    // checked; the descriptors are owned by Files from here on.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if m < 0 {
            bail!("posix_openpt: {}", std::io::Error::last_os_error());
        }
        let master = File::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            bail!("grantpt/unlockpt: {}", std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            bail!("ptsname_r: {}", std::io::Error::last_os_error());
        }
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if s < 0 {
            bail!("open the pty: {}", std::io::Error::last_os_error());
        }
        (master, File::from_raw_fd(s))
    };
    let mut child = c.stdout(Stdio::null()).stderr(slave).spawn()?;
    // Read while it runs; the read ends (EIO) once the child's end is closed.
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    });
    // `c` held the only other copy of the child's end.
    drop(c);
    let status = child.wait()?;
    let out = text(&reader.join().ok().context("pty reader")?);
    if !status.success() {
        bail!("{status}: {out}");
    }
    Ok(out)
}

/// On a terminal, colour unless NO_COLOR is set to something (https://no-color.org). Passes
/// on the old code too: it pins that the fix keeps colour where it belongs.
#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color() -> Result<()> {
    let dir = tmpdir("tty")?;
    let plain = stderr_on_a_terminal(logging_command(&dir.join("a.db")))?;
    assert!(
        plain.contains("\x1b[") && plain.contains(LOGGED),
        "{plain:?}"
    );
    let mut c = logging_command(&dir.join("b.db"));
    c.env("NO_COLOR", "1");
    let no_color = stderr_on_a_terminal(c)?;
    assert!(no_color.contains(LOGGED), "{no_color:?}");
    assert!(
        !no_color.contains("\x1b["),
        "NO_COLOR=1 ignored: {no_color:?}"
    );
    // An empty NO_COLOR does not count.
    let mut c = logging_command(&dir.join("c.db"));
    c.env("NO_COLOR", "");
    let empty = stderr_on_a_terminal(c)?;
    assert!(empty.contains("\x1b["), "{empty:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
