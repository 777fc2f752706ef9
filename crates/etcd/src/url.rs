//! `etcd://[user:password@]host:port[,host:port...][/prefix][?cacert=PATH[&cert=PATH&key=PATH]]`
//! URLs. `cacert` turns TLS on: the servers' certificates must be signed by that CA and name
//! the host connected to; `cert` and `key` give a client certificate for servers that ask for
//! one (`--client-cert-auth`).

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
}

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
        if let Some(t) = &self.tls {
            write!(f, "?cacert={}", t.ca.display())?;
            if let Some((c, k)) = &t.identity {
                write!(f, "&cert={}&key={}", c.display(), k.display())?;
            }
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
        let tls = TlsFiles::from_query(query).map_err(|r| err(&r))?;
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
