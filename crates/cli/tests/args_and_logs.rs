//! What every subcommand does with arguments that are not UTF-8, and when its log lines on
//! stderr carry colour codes.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Result;

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
        out.status.code() == Some(2) && err.contains("does not exist") && !err.contains("UTF-8"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
