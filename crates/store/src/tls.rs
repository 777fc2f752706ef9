//! The TLS files a networked backend's URL names (a CA to verify the servers, optionally a
//! client certificate and key), checked when the URL is parsed: a wrong path is a URL error,
//! not a connection that keeps failing. PostgreSQL and ZooKeeper read the files for every new
//! connection, so a rotated certificate is picked up without a restart; etcd when the store
//! creates its client (once per store).

use std::path::PathBuf;

/// The files (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the CA (or CAs) that signed the servers' certificates.
    pub ca: PathBuf,
    /// PEM: a client certificate (chain) and its private key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// The TLS parameters of a URL's query string (`cacert` turns TLS on; `cert` and `key`),
    /// the form of `zk://` and `etcd://` URLs. Any other parameter is an error.
    pub fn from_query(query: Option<&str>) -> Result<Option<TlsFiles>, String> {
        let Some(q) = query else { return Ok(None) };
        let (mut ca, mut cert, mut key) = (None, None, None);
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("parameter {pair:?} has no value (KEY=VALUE)"))?;
            let slot = match k {
                "cacert" => &mut ca,
                "cert" => &mut cert,
                "key" => &mut key,
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?} (known: cacert, cert, key)"
                    ))
                }
            };
            if slot.replace(v).is_some() {
                return Err(format!("{k} given twice"));
            }
        }
        Self::from_params(("cacert", ca), ("cert", cert), ("key", key))
    }

    /// The files of a URL's TLS parameters, each given as (the parameter's name in this URL
    /// scheme, its value): `None` when none is given (no TLS); an error naming the parameter
    /// when a file cannot be opened, a value is empty, or only one of certificate and key is
    /// given, or a client certificate comes without a CA.
    pub fn from_params(
        ca: (&str, Option<&str>),
        cert: (&str, Option<&str>),
        key: (&str, Option<&str>),
    ) -> Result<Option<TlsFiles>, String> {
        let mut files = Vec::new();
        for (name, value) in [ca, cert, key] {
            let path = match value {
                Some("") => return Err(format!("{name} needs a file path")),
                Some(v) => {
                    std::fs::File::open(v).map_err(|e| format!("{name} {v}: {e}"))?;
                    Some(PathBuf::from(v))
                }
                None => None,
            };
            files.push(path);
        }
        let [ca_path, cert_path, key_path]: [Option<PathBuf>; 3] = files
            .try_into()
            .map_err(|_| "three parameters".to_string())?;
        let identity = match (cert_path, key_path) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(format!("{} and {} go together", cert.0, key.0)),
        };
        match ca_path {
            Some(ca) => Ok(Some(TlsFiles { ca, identity })),
            None if identity.is_some() => Err(format!(
                "a client certificate needs {} (the CA that signed the servers' certificates)",
                ca.0
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_and_paired() {
        let f = std::env::temp_dir().join(format!("rb-tls-files-{}.pem", std::process::id()));
        std::fs::write(&f, "x").unwrap();
        let p = f.to_str().unwrap();
        let none = TlsFiles::from_params(("ca", None), ("cert", None), ("key", None));
        assert_eq!(none, Ok(None));
        let ca = TlsFiles::from_params(("ca", Some(p)), ("cert", None), ("key", None));
        assert_eq!(ca.unwrap().unwrap().identity, None);
        let all = TlsFiles::from_params(("ca", Some(p)), ("cert", Some(p)), ("key", Some(p)));
        assert!(all.unwrap().unwrap().identity.is_some());
        for (args, want) in [
            ((Some(p), Some(p), None), "go together"),
            ((None, Some(p), Some(p)), "needs ca"),
            (
                (Some("/nonexistent/x.pem"), None, None),
                "/nonexistent/x.pem",
            ),
            ((Some(""), None, None), "file path"),
        ] {
            let e = TlsFiles::from_params(("ca", args.0), ("cert", args.1), ("key", args.2))
                .unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let _ = std::fs::remove_file(&f);
    }
}
