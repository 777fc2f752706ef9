//! `sqlite:///abs/path.db` and `sqlite://relative/path.db` URLs.

use std::path::PathBuf;

use crate::SqliteError;

/// The database path of a `sqlite://` URL: everything after `sqlite://`, percent-decoded
/// (`sqlite:///var/lib/x.db` is absolute, `sqlite://x.db` relative to the working directory).
/// Query strings and fragments are refused rather than taken as part of a file name.
pub(crate) fn parse(url: &str) -> Result<PathBuf, SqliteError> {
    let err = |reason: &str| SqliteError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| err("must start with sqlite://"))?;
    if rest.contains('?') || rest.contains('#') {
        return Err(err(
            "query strings and fragments are not supported (escape ? as %3F, # as %23)",
        ));
    }
    let path = percent_decode(rest).ok_or_else(|| err("malformed %-escape"))?;
    if path.is_empty() || path.ends_with('/') {
        return Err(err("no file name"));
    }
    if path == ":memory:" || path.starts_with("file:") {
        return Err(err(
            "an in-memory or URI database cannot be shared between processes: give a file path",
        ));
    }
    if path.contains('\0') {
        return Err(err("NUL in the path"));
    }
    Ok(PathBuf::from(path))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_relative_paths() {
        assert_eq!(
            parse("sqlite:///var/lib/r.db").unwrap(),
            PathBuf::from("/var/lib/r.db")
        );
        assert_eq!(parse("sqlite://r.db").unwrap(), PathBuf::from("r.db"));
        assert_eq!(
            parse("sqlite://./d/r.db").unwrap(),
            PathBuf::from("./d/r.db")
        );
        assert_eq!(
            parse("sqlite:///tmp/a%20b%3F.db").unwrap(),
            PathBuf::from("/tmp/a b?.db")
        );
    }

    #[test]
    fn refuses_what_is_not_a_shared_file() {
        for bad in [
            "postgres://x",
            "sqlite:/x.db",
            "sqlite://",
            "sqlite:///",
            "sqlite:///tmp/",
            "sqlite://:memory:",
            "sqlite://file:x.db",
            "sqlite:///x.db?mode=ro",
            "sqlite:///x.db#f",
            "sqlite:///x%2",
            "sqlite:///x%zz",
            "sqlite:///x%00",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e} names the URL");
        }
    }
}
