//! `etcd://[user:password@]host:port[,host:port...][/prefix][?cacert=PATH[&cert=PATH&key=PATH]]`
//! URLs. `cacert` turns TLS on: the servers' certificates must be signed by that CA and name
//! the host connected to; `cert` and `key` give a client certificate for servers that ask for
//! one (`--client-cert-auth`). `allow_server_bug=15247` accepts a server with etcd #15247
//! (older than 3.4.31 / 3.5.13), which the store otherwise refuses (PITFALLS 3).

use std::fmt;

pub use rebalanser_store::TlsFiles;

/// Why an `etcd://` URL was refused. The URL is quoted with its password replaced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad etcd URL {url:?}: {reason}")]
pub struct EtcdUrlError {
    pub url: String,
    pub reason: String,
}

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "rebalanser";

/// A parsed `etcd://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `host:port` endpoints, in the order given.
    pub endpoints: Vec<String>,
    /// Every key the store writes lives under `/<prefix>/`. No leading or trailing `/`.
    pub prefix: String,
    pub credentials: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
    /// `allow_server_bug=15247`: run on a server with etcd #15247 anyway.
    pub allow_15247: bool,
}

/// The parameter that accepts a server with etcd #15247, and its only value.
pub const ALLOW_BUG_PARAM: &str = "allow_server_bug";
pub const ALLOW_BUG_VALUE: &str = "15247";

impl fmt::Debug for EtcdUrl {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for EtcdUrl {
    /// The URL without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("etcd://")?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}:***@")?;
        }
        write!(f, "{}/{}", self.endpoints.join(","), self.prefix)?;
        let mut sep = '?';
        if let Some(t) = &self.tls {
            write!(f, "?cacert={}", t.ca.display())?;
            if let Some((c, k)) = &t.identity {
                write!(f, "&cert={}&key={}", c.display(), k.display())?;
            }
            sep = '&';
        }
        if self.allow_15247 {
            write!(f, "{sep}{ALLOW_BUG_PARAM}={ALLOW_BUG_VALUE}")?;
        }
        Ok(())
    }
}

impl EtcdUrl {
    pub fn parse(url: &str) -> Result<EtcdUrl, EtcdUrlError> {
        let err = |reason: &str| EtcdUrlError {
            url: redact(url),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| err("must start with etcd://"))?;
        if rest.contains('#') {
            return Err(err("fragments are not supported"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        // Our own parameter first; the rest are the TLS files'.
        let mut allow_15247 = false;
        let mut rest_query = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((ALLOW_BUG_PARAM, ALLOW_BUG_VALUE)) if !allow_15247 => allow_15247 = true,
                Some((ALLOW_BUG_PARAM, v)) => {
                    return Err(err(&format!(
                        "{ALLOW_BUG_PARAM}={v}: the only server bug that can be accepted is \
                         {ALLOW_BUG_VALUE}, once"
                    )))
                }
                _ => rest_query.push(pair),
            }
        }
        let rest_query = rest_query.join("&");
        let tls = TlsFiles::from_query(query.map(|_| rest_query.as_str())).map_err(|r| err(&r))?;
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((info, hosts)) => {
                let (user, pw) = info
                    .split_once(':')
                    .ok_or_else(|| err("credentials must be user:password@"))?;
                if user.is_empty() {
                    return Err(err("empty user name"));
                }
                (Some((user.to_string(), pw.to_string())), hosts)
            }
            None => (None, authority),
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| err(&format!("{h:?} needs a port: HOST:PORT")))?;
            if host.is_empty() {
                return Err(err(&format!("{h:?} has no host")));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(err(&format!("{h:?}: bad port"))),
            }
            endpoints.push(h.to_string());
        }
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX.to_string()
        } else {
            prefix.to_string()
        };
        if prefix
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            || prefix.chars().any(char::is_control)
        {
            return Err(err("the prefix must be /-separated non-empty names"));
        }
        Ok(EtcdUrl {
            endpoints,
            prefix,
            credentials,
            tls,
            allow_15247,
        })
    }

    /// The byte prefix of every key: `/<prefix>/`.
    pub fn root(&self) -> String {
        format!("/{}/", self.prefix)
    }
}

/// `url` with the password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.to_string();
    };
    let end = url[s + 3..]
        .find(['/', '?'])
        .map_or(url.len(), |i| s + 3 + i);
    match url[s + 3..end].rfind('@') {
        Some(at) => {
            let info = &url[s + 3..s + 3 + at];
            match info.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[s + 3 + at..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_bug_is_accepted_only_by_name_and_kept_in_the_description() {
        let u = EtcdUrl::parse("etcd://h:2379/x?allow_server_bug=15247").unwrap();
        assert!(u.allow_15247 && u.tls.is_none());
        assert_eq!(u.to_string(), "etcd://h:2379/x?allow_server_bug=15247");
        assert!(!EtcdUrl::parse("etcd://h:2379/x").unwrap().allow_15247);
        for bad in [
            "etcd://h:2379/x?allow_server_bug=1",
            "etcd://h:2379/x?allow_server_bug=15247&allow_server_bug=15247",
            "etcd://h:2379/x?allow_server_bug",
        ] {
            assert!(EtcdUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_prefix_and_credentials() {
        let u = EtcdUrl::parse("etcd://app:s3cret@10.0.0.1:2379,h2:2380/svc/groups").unwrap();
        assert_eq!(u.endpoints, ["10.0.0.1:2379", "h2:2380"]);
        assert_eq!(u.prefix, "svc/groups");
        assert_eq!(u.root(), "/svc/groups/");
        assert_eq!(
            u.to_string(),
            "etcd://app:***@10.0.0.1:2379,h2:2380/svc/groups"
        );
        assert_eq!(format!("{u:?}"), u.to_string());
        let d = EtcdUrl::parse("etcd://h:2379").unwrap();
        assert_eq!(d.prefix, DEFAULT_PREFIX);
        assert_eq!(EtcdUrl::parse("etcd://h:2379/x/").unwrap().prefix, "x");
        let ca = std::env::temp_dir().join(format!("rb-etcd-url-{}.pem", std::process::id()));
        std::fs::write(&ca, "x").unwrap();
        let t = EtcdUrl::parse(&format!("etcd://h:2379/x?cacert={}", ca.display())).unwrap();
        assert_eq!(t.tls.as_ref().map(|t| t.ca.clone()), Some(ca.clone()));
        assert!(t
            .to_string()
            .ends_with(&format!("/x?cacert={}", ca.display())));
        let half = format!("etcd://h:2379/x?cacert={0}&cert={0}", ca.display());
        assert!(EtcdUrl::parse(&half)
            .unwrap_err()
            .reason
            .contains("together"));
        let _ = std::fs::remove_file(&ca);
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for (url, why) in [
            ("zk://u:secret@h:1", "etcd://"),
            ("etcd://u:secret@h", "port"),
            ("etcd://u:secret@h:0", "bad port"),
            ("etcd://u:secret@h:x", "bad port"),
            ("etcd://u:secret@:1", "no host"),
            ("etcd://u:secret@h:1/a//b", "prefix"),
            ("etcd://u:secret@h:1/a/../b", "prefix"),
            ("etcd://u:secret@h:1/a?x=1", "unknown parameter"),
            (
                "etcd://u:secret@h:1/a?cacert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
            ("etcd://u:secret@h:1/a?cacert=", "file path"),
            ("etcd://u:secret@h:1/a#f", "fragments"),
        ] {
            let e = EtcdUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: password echoed: {e}");
        }
        let e = EtcdUrl::parse("etcd://someone@h:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("user:password"), "{e}");
    }
}
