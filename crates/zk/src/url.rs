//! `zk://[user:password@]host:port[,host:port...][/chroot][?cacert=PATH[&cert=PATH&key=PATH]]`
//! URLs. `cacert` turns TLS on (the servers' `secureClientPort`): their certificates must be
//! signed by that CA and name the host connected to; `cert` and `key` give a client
//! certificate for servers with `ssl.clientAuth=need`.

use std::fmt;

pub use rebalanser_store::TlsFiles;

/// Why a `zk://` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad ZooKeeper URL {url:?}: {reason}")]
pub struct ZkUrlError {
    pub url: String,
    pub reason: String,
}

/// A parsed `zk://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkUrl {
    /// `host:port` pairs, in the order given.
    pub hosts: Vec<(String, u16)>,
    /// The chroot every key lives under, `/` for none. Never ends with `/` unless it is `/`.
    pub chroot: String,
    /// Digest credentials (`user`, `password`): every node the store creates gets an ACL that
    /// gives all rights to this identity only.
    pub digest: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
}

impl fmt::Debug for ZkUrl {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for ZkUrl {
    /// The URL without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("zk://")?;
        if let Some((user, _)) = &self.digest {
            write!(f, "{user}:***@")?;
        }
        f.write_str(&self.connect_string())?;
        if self.chroot != "/" {
            f.write_str(&self.chroot)?;
        }
        if let Some(t) = &self.tls {
            write!(f, "?cacert={}", t.ca.display())?;
            if let Some((c, k)) = &t.identity {
                write!(f, "&cert={}&key={}", c.display(), k.display())?;
            }
        }
        Ok(())
    }
}

impl ZkUrl {
    pub fn parse(url: &str) -> Result<ZkUrl, ZkUrlError> {
        let err = |reason: &str| ZkUrlError {
            url: redact(url),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| err("must start with zk://"))?;
        // The query starts at the first '?' after the credentials (a password may hold '?').
        let after_credentials = rest.rfind('@').map_or(0, |a| a + 1);
        let (rest, query) = match rest[after_credentials..].find('?') {
            Some(q) => (
                &rest[..after_credentials + q],
                Some(&rest[after_credentials + q + 1..]),
            ),
            None => (rest, None),
        };
        let tls = TlsFiles::from_query(query).map_err(|r| err(&r))?;
        // Credentials end at the last '@' (a password may hold '/' or '@'); they are
        // percent-decoded, and no error ever quotes them.
        let (digest, rest) = match rest.rsplit_once('@') {
            Some((cred, rest)) => {
                let (user, password) = cred
                    .split_once(':')
                    .ok_or_else(|| err("credentials must be user:password@"))?;
                let (Some(user), Some(password)) = (percent_decode(user), percent_decode(password))
                else {
                    return Err(err("credentials have a malformed %-escape"));
                };
                if user.is_empty() || password.is_empty() {
                    return Err(err("empty user or password"));
                }
                (Some((user, password)), rest)
            }
            None => (None, rest),
        };
        let (hosts, chroot) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if hosts.is_empty() {
            return Err(err("no hosts"));
        }
        let mut parsed = Vec::new();
        for h in hosts.split(',') {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| err(&format!("host {h:?} has no :port")))?;
            if host.is_empty() || host.contains(|c: char| c.is_whitespace()) {
                return Err(err(&format!("bad host {host:?}")));
            }
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(&format!("bad port {port:?} (1-65535)")))?;
            parsed.push((host.to_string(), port));
        }
        let chroot = if chroot == "/" {
            "/".to_string()
        } else {
            let trimmed = chroot.strip_suffix('/').unwrap_or(chroot);
            let comps: Vec<&str> = trimmed[1..].split('/').collect();
            if comps
                .iter()
                .any(|c| c.is_empty() || *c == "." || *c == ".." || c.contains(char::is_control))
            {
                return Err(err(&format!("bad chroot {chroot:?}")));
            }
            if comps[0] == "zookeeper" {
                return Err(err("the chroot /zookeeper is reserved by ZooKeeper"));
            }
            trimmed.to_string()
        };
        Ok(ZkUrl {
            hosts: parsed,
            chroot,
            digest,
            tls,
        })
    }

    /// `h1:p1,h2:p2`, as the client library takes it.
    pub fn connect_string(&self) -> String {
        self.hosts
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The URL with everything before the last '@' of its authority replaced, for errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_chroot_and_credentials() {
        let u = ZkUrl::parse("zk://app:s3cret@h1:2181,10.0.0.2:2182/svc/groups").unwrap();
        assert_eq!(
            u.hosts,
            vec![("h1".into(), 2181), ("10.0.0.2".into(), 2182)]
        );
        assert_eq!(u.chroot, "/svc/groups");
        assert_eq!(u.digest, Some(("app".into(), "s3cret".into())));
        assert_eq!(
            u.to_string(),
            "zk://app:***@h1:2181,10.0.0.2:2182/svc/groups"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        let u = ZkUrl::parse("zk://h:1/").unwrap();
        assert_eq!(u.chroot, "/");
        assert_eq!(ZkUrl::parse("zk://h:1/a/").unwrap().chroot, "/a");
    }

    #[test]
    fn refuses_bad_urls_naming_the_problem() {
        for (url, why) in [
            ("etcd://h:1", "zk://"),
            ("zk://", "no hosts"),
            ("zk:///chroot", "no hosts"),
            ("zk://h", "no :port"),
            ("zk://h:0", "bad port"),
            ("zk://h:99999", "bad port"),
            ("zk://h:x", "bad port"),
            ("zk://h:1,", "no :port"),
            ("zk://h:1//a", "bad chroot"),
            ("zk://h:1/a/../b", "bad chroot"),
            ("zk://h:1/zookeeper", "reserved"),
            ("zk://user@h:1", "user:password"),
            ("zk://:pw@h:1", "empty user"),
            ("zk://h:1/a?x=1", "unknown parameter"),
            (
                "zk://h:1/a?cacert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
        ] {
            let e = ZkUrl::parse(url).expect_err(url);
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
        for url in [
            "zk://u:topsecret@h",
            "zk://u:top/secret@h:x/c",
            "zk://u:topsecret%zz@h:1",
        ] {
            let e = ZkUrl::parse(url).unwrap_err();
            assert!(!e.to_string().contains("top"), "{e}");
        }
        let u = ZkUrl::parse("zk://app:a%2Fb%40c@h:1/x").unwrap();
        assert_eq!(u.digest, Some(("app".into(), "a/b@c".into())));
        let u = ZkUrl::parse("zk://app:s3cr/et@h:1/x").unwrap();
        assert_eq!(u.digest, Some(("app".into(), "s3cr/et".into())));
        assert_eq!(u.chroot, "/x");
    }
}
