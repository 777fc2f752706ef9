//! `postgres://user:password@host:port/database?schema=NAME&...` URLs.
//!
//! `schema` and the TLS files (`sslrootcert`, `sslcert`, `sslkey`) are this crate's; the rest
//! is handed to tokio-postgres, which knows libpq's parameters (`connect_timeout`,
//! `application_name`, `target_session_attrs`, ...). The password is never printed:
//! [`redact`] replaces it wherever a URL is quoted.
//!
//! TLS: `sslmode=require`, `verify-ca` or `verify-full`, or just `sslrootcert=PATH`, connects
//! over TLS and always verifies the server's certificate against `sslrootcert` (the CA that
//! signed it) and the host name — stricter than libpq's `require`, which checks nothing, so
//! `sslrootcert` is required with it. `sslcert` and `sslkey` give a client certificate.
//! `sslmode=disable`, `allow` or `prefer` (libpq's default) connect in plain text.

use rebalanser_store::TlsFiles;
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;

use crate::PostgresError;

/// The schema used when the URL names none.
pub const DEFAULT_SCHEMA: &str = "rebalanser";
/// Longest schema name: PostgreSQL identifiers are at most 63 bytes and the notification
/// channel is the schema name behind a short prefix.
pub const MAX_SCHEMA_LEN: usize = 48;

/// A parsed URL.
pub(crate) struct Parsed {
    pub config: Config,
    pub schema: String,
    /// The URL as given, password replaced, for logs and errors.
    pub redacted: String,
    pub tls: Option<TlsFiles>,
}

pub(crate) fn parse(url: &str) -> Result<Parsed, PostgresError> {
    let redacted = redact(url);
    let err = |reason: String| PostgresError::Url {
        url: redacted.clone(),
        reason,
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| err("must start with postgres:// or postgresql://".into()))?;
    if rest.contains('#') {
        return Err(err("fragments (#...) are not supported".into()));
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut schema = None;
    let (mut rootcert, mut cert, mut key) = (None, None, None);
    // libpq's modes; tokio-postgres knows only three of them, so this crate reads it.
    let mut wants_tls = false;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        match pair.split_once('=') {
            Some(("schema", v)) => {
                if schema.replace(v.to_string()).is_some() {
                    return Err(err("schema given twice".into()));
                }
            }
            Some((k @ ("sslrootcert" | "sslcert" | "sslkey"), v)) => {
                let slot = match k {
                    "sslrootcert" => &mut rootcert,
                    "sslcert" => &mut cert,
                    _ => &mut key,
                };
                if slot.replace(v).is_some() {
                    return Err(err(format!("{k} given twice")));
                }
            }
            Some(("sslmode", v)) => {
                wants_tls = match v {
                    "disable" | "allow" | "prefer" => false,
                    "require" | "verify-ca" | "verify-full" => true,
                    _ => {
                        return Err(err(format!(
                            "sslmode {v:?}: one of disable, allow, prefer, require, verify-ca, \
                             verify-full"
                        )))
                    }
                }
            }
            Some(_) => kept.push(pair),
            None => return Err(err(format!("parameter {pair:?} has no value (KEY=VALUE)"))),
        }
    }
    let schema = schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
    if let Some(reason) = schema_error(&schema) {
        return Err(err(reason));
    }
    if base.len() <= "postgres://".len() {
        return Err(err("no host: postgres://USER@HOST:PORT/DATABASE".into()));
    }
    let rebuilt = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: Config = rebuilt
        .parse()
        // tokio-postgres's messages name the option, never the password.
        .map_err(|e: tokio_postgres::Error| err(e.to_string()))?;
    if config.get_hosts().is_empty() {
        return Err(err("no host: postgres://USER@HOST:PORT/DATABASE".into()));
    }
    if config.get_user().is_none() {
        return Err(err("no user: postgres://USER@HOST:PORT/DATABASE".into()));
    }
    let tls = TlsFiles::from_params(
        ("sslrootcert", rootcert),
        ("sslcert", cert),
        ("sslkey", key),
    )
    .map_err(&err)?;
    if tls.is_none() && wants_tls {
        return Err(err(
            "TLS needs sslrootcert=PATH, the CA that signed the server's certificate: this \
             store always verifies the server (unlike libpq's sslmode=require)"
                .into(),
        ));
    }
    // TLS exactly when asked for: never the opportunistic `prefer`, which would fail on a
    // server offering TLS with a certificate this store cannot verify.
    config.ssl_mode(if tls.is_some() {
        SslMode::Require
    } else {
        SslMode::Disable
    });
    Ok(Parsed {
        config,
        schema,
        redacted,
        tls,
    })
}

/// Why `s` cannot be the schema, if it cannot: an unquoted lower-case identifier, so that it
/// means the same thing quoted or not, in SQL and in `psql`.
pub(crate) fn schema_error(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCHEMA_LEN
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with("pg_");
    (!ok).then(|| {
        format!(
            "schema {s:?}: must be 1..={MAX_SCHEMA_LEN} of a-z, 0-9 and _, not starting with a \
             digit or pg_"
        )
    })
}

/// `url` with the password (in the user info, or a `password=` parameter) replaced by `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(s) = out.find("://") {
        let auth_end = out[s + 3..]
            .find(['/', '?'])
            .map_or(out.len(), |i| s + 3 + i);
        if let Some(at) = out[s + 3..auth_end].rfind('@') {
            let info = s + 3..s + 3 + at;
            if let Some(colon) = out[info.clone()].find(':') {
                out.replace_range(info.start + colon + 1..info.end, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let params: Vec<String> = out[q + 1..]
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("password", _)) => "password=***".to_string(),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_and_libpq_parameters() {
        let p = parse("postgres://app:pw@db.example:5433/jobs?schema=team_a&connect_timeout=3")
            .expect("valid");
        assert_eq!(p.schema, "team_a");
        assert_eq!(p.config.get_dbname(), Some("jobs"));
        assert_eq!(p.config.get_user(), Some("app"));
        assert_eq!(p.config.get_ports(), &[5433]);
        assert_eq!(
            p.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(
            p.redacted,
            "postgres://app:***@db.example:5433/jobs?schema=team_a&connect_timeout=3"
        );
        let d = parse("postgresql://app@h/db").expect("valid");
        assert_eq!(d.schema, DEFAULT_SCHEMA);
        assert_eq!(d.tls, None);
        assert_eq!(d.config.get_ssl_mode(), SslMode::Disable);
        let ca = std::env::temp_dir().join(format!("rb-pg-url-{}.pem", std::process::id()));
        std::fs::write(&ca, "x").unwrap();
        let t = parse(&format!("postgres://app@h/db?sslrootcert={}", ca.display())).unwrap();
        assert_eq!(t.tls.as_ref().map(|t| t.ca.clone()), Some(ca.clone()));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        let half = format!(
            "postgres://app@h/db?sslrootcert={0}&sslcert={0}",
            ca.display()
        );
        assert!(parse(&half).err().unwrap().to_string().contains("together"));
        let _ = std::fs::remove_file(&ca);
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for (url, why) in [
            ("mysql://u:secret@h/db", "postgres://"),
            ("postgres://u:secret@h/db?schema=Bad", "schema"),
            ("postgres://u:secret@h/db?schema=pg_x", "schema"),
            ("postgres://u:secret@h/db?schema=a&schema=b", "twice"),
            ("postgres://u:secret@h/db?bogus=1", "bogus"),
            ("postgres://u:secret@h/db?flag", "no value"),
            ("postgres://u:secret@h/db?sslmode=require", "sslrootcert"),
            (
                "postgres://u:secret@h/db?sslmode=verify-full",
                "sslrootcert",
            ),
            (
                "postgres://u:secret@h/db?sslrootcert=/nonexistent/ca.pem",
                "/nonexistent",
            ),
            ("postgres://u:secret@h/db?sslrootcert=", "file path"),
            ("postgres://u:secret@h/db?sslmode=maybe", "sslmode"),
            ("postgres://", "no host"),
            ("postgres://h/db#x", "fragment"),
        ] {
            let e = parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"))
                .to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: password echoed: {e}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://h/db?user=u&password=p"),
            "postgres://h/db?user=u&password=***"
        );
        assert_eq!(redact("postgres://u:p:q@h/db"), "postgres://u:***@h/db");
    }
}
