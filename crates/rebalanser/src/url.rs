//! Store selection by URL (DESIGN §2). This build has `sqlite:///path.db` (the embedded
//! default: processes on one host share the file; opening it checks the file and may wait up
//! to the busy/open timeout), `zk://[user:password@]h1:p1,h2:p2[/chroot]`,
//! `postgres://user:password@host:port/database?schema=NAME` and
//! `etcd://[user:password@]h1:p1,h2:p2[/prefix]` (both connect on first use) and
//! `memory://name`; any other well formed URL is
//! [`Error::UnsupportedStore`], kept apart from [`Error::BadUrl`] so that a typo and a missing
//! backend read differently. Each backend but `memory` is a Cargo feature (`sqlite`,
//! `zookeeper`, `postgres`, `etcd`, all on by default); a URL of a backend compiled out is
//! [`Error::BackendNotCompiled`], naming the feature.

use std::sync::Arc;

use rebalanser_store::{MemoryStore, Store};

use crate::error::Error;

/// Opens the store a URL names, creating a `sqlite://` file that does not exist yet (as
/// [`open_store_with`] with [`OpenOptions::default`]).
///
/// `memory://NAME` is the in-process store shared by every handle with the same name in this
/// process; its data lives while any handle to it does (so keep an [`crate::Admin`] or a member
/// alive, or the group vanishes with the last handle).
pub fn open_store(url: &str) -> Result<Arc<dyn Store>, Error> {
    open_store_with(url, OpenOptions::default())
}

/// How [`open_store_with`] opens a store. The default creates a missing `sqlite://` file and
/// allows writes, as [`open_store`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    read_only: bool,
    create: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            create: true,
        }
    }
}

impl OpenOptions {
    /// The default: writable, creating a missing file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only read: every write through the store fails with [`crate::StoreError::Invalid`]
    /// (wrapped in [`Error::Store`] by the API). A `sqlite://` file is opened
    /// `SQLITE_OPEN_READONLY`, so it works on a file the process may only read and never
    /// changes it; nothing is ever created (a read-only open implies `create(false)`).
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Create a missing `sqlite://` file (default `true`). Off, a missing file is
    /// [`Error::NoStoreFile`] and nothing appears at the path: a mistyped path leaves no stray
    /// file. Server stores (ZooKeeper, PostgreSQL, etcd) and `memory://` ignore it.
    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether a missing file is created: never for a read-only open.
    pub fn creates(&self) -> bool {
        self.create && !self.read_only
    }
}

/// Opens the store a URL names, as `opts` say (see [`OpenOptions`]).
pub fn open_store_with(url: &str, opts: OpenOptions) -> Result<Arc<dyn Store>, Error> {
    let store = open_url(url, opts)?;
    Ok(if opts.read_only {
        Arc::new(crate::read_only::ReadOnly::new(store))
    } else {
        store
    })
}

// `opts` reaches only the SQLite backend (the one that creates files).
#[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
fn open_url(url: &str, opts: OpenOptions) -> Result<Arc<dyn Store>, Error> {
    let bad = |reason: &str| Error::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected SCHEME://..., e.g. memory://demo"));
    };
    if scheme.is_empty() {
        return Err(bad("the scheme before :// is empty"));
    }
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(bad(
            "the scheme must start with a letter and contain only letters, digits, '+', '-', '.'",
        ));
    }
    if let Some((at, ch)) = url.char_indices().find(|(_, c)| c.is_control()) {
        return Err(bad(&format!(
            "control character {ch:?} at byte {at}; URLs must be printable"
        )));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => {
            if rest.is_empty() {
                return Err(bad("memory:// needs a store name, e.g. memory://demo"));
            }
            if rest.contains(['/', '?', '#']) {
                return Err(bad(
                    "a memory store name cannot contain '/', '?' or '#': use memory://NAME",
                ));
            }
            Ok(Arc::new(MemoryStore::named(rest)))
        }
        #[cfg(feature = "zookeeper")]
        "zk" => match rebalanser_zk::ZkStore::from_url(url) {
            Ok(s) => Ok(Arc::new(s)),
            // The ZooKeeper parser's message already quotes the (redacted) URL.
            Err(e) => Err(Error::BadUrl {
                url: e.url,
                reason: e.reason,
            }),
        },
        #[cfg(feature = "sqlite")]
        "sqlite" => match rebalanser_sqlite::SqliteStore::from_url_with(
            url,
            rebalanser_sqlite::SqliteOptions {
                read_only: opts.read_only,
                create: opts.creates(),
                ..Default::default()
            },
        ) {
            Ok(s) => Ok(Arc::new(s)),
            Err(rebalanser_sqlite::SqliteError::Url { reason, .. }) => Err(bad(&reason)),
            Err(rebalanser_sqlite::SqliteError::NoSuchFile { path }) => Err(Error::NoStoreFile {
                url: url.to_string(),
                path: path.display().to_string(),
            }),
            Err(e) => Err(Error::StoreOpen {
                url: url.to_string(),
                reason: e.to_string(),
            }),
        },
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            match rebalanser_postgres::PostgresStore::from_url(url) {
                Ok(s) => Ok(Arc::new(s)),
                // Connects lazily: only a malformed URL fails here, and its message quotes the
                // URL with the password replaced.
                Err(rebalanser_postgres::PostgresError::Url { url, reason }) => {
                    Err(Error::BadUrl { url, reason })
                }
                Err(e) => Err(Error::StoreOpen {
                    url: rebalanser_postgres::redact(url),
                    reason: e.to_string(),
                }),
            }
        }
        #[cfg(feature = "etcd")]
        "etcd" => match rebalanser_etcd::EtcdStore::from_url(url) {
            Ok(s) => Ok(Arc::new(s)),
            // The etcd parser's message already quotes the (redacted) URL.
            Err(e) => Err(Error::BadUrl {
                url: e.url,
                reason: e.reason,
            }),
        },
        other => match backend_feature(other) {
            // Reached only when that backend's feature is off: its arm above is compiled out.
            // Not the URL: it may hold a password, and the scheme is what names the fix.
            Some(feature) => Err(Error::BackendNotCompiled {
                scheme: other.to_string(),
                feature,
            }),
            None => Err(Error::UnsupportedStore {
                url: url.to_string(),
            }),
        },
    }
}

/// The Cargo feature of this crate that compiles in the backend of a (lower-case) URL scheme;
/// `None` for a scheme no build supports. `memory` needs none.
pub(crate) fn backend_feature(scheme: &str) -> Option<&'static str> {
    match scheme {
        "sqlite" => Some("sqlite"),
        "zk" => Some("zookeeper"),
        "postgres" | "postgresql" => Some("postgres"),
        "etcd" => Some("etcd"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_urls_share_one_store_per_name() {
        let a = open_store("memory://url-test-shared").expect("valid");
        let b = open_store("memory://url-test-shared").expect("valid");
        assert_eq!(a.describe(), "memory://url-test-shared");
        a.execute(rebalanser_store::StoreOp::Txn {
            conds: vec![],
            writes: vec![rebalanser_store::Write::Put {
                key: "ns/k".into(),
                value: vec![1],
            }],
        })
        .await
        .expect("put");
        let got = b
            .execute(rebalanser_store::StoreOp::Get {
                key: "ns/k".into(),
                linearizable: true,
            })
            .await
            .expect("get");
        assert!(matches!(got, rebalanser_store::StoreReply::Got(Some(_))));
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_urls_open_the_file_and_name_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("rb-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = dir.join("g.db");
        let s = open_store(&format!("sqlite://{}", db.display())).expect("a new database");
        assert!(s.describe().contains("g.db"), "{}", s.describe());
        let junk = dir.join("junk.db");
        std::fs::write(&junk, b"this is not a database, it is a text file").expect("write");
        match open_store(&format!("sqlite://{}", junk.display())) {
            Err(e @ Error::StoreOpen { .. }) => assert!(e.to_string().contains("junk.db"), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a text file opened as a store"),
        }
        assert!(matches!(open_store("sqlite://"), Err(Error::BadUrl { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(all(feature = "zookeeper", feature = "postgres", feature = "etcd"))]
    #[test]
    fn bad_urls_are_typed_and_named() {
        for url in [
            "nonsense",
            "://x",
            "memory://",
            "1x://y",
            "memory://a/b",
            "memory://a\nb",
        ] {
            match open_store(url) {
                Err(e @ Error::BadUrl { .. }) => {
                    assert!(e.to_string().contains(&format!("{url:?}")), "{e}")
                }
                Err(other) => panic!("{url}: {other}"),
                Ok(_) => panic!("{url}: accepted"),
            }
        }
        for url in ["zk://h", "zk://h:0/x", "zk://u@h:1"] {
            assert!(
                matches!(open_store(url), Err(Error::BadUrl { .. })),
                "{url}"
            );
        }
        let zk = open_store("zk://app:pw@h1:2181,h2:2181/svc").expect("a zk URL");
        assert_eq!(zk.describe(), "zk://app:***@h1:2181,h2:2181/svc");
        let pg = open_store("postgres://app:pw@db:5432/jobs?schema=team").expect("a postgres URL");
        assert_eq!(pg.describe(), "postgres://app:***@db:5432/jobs?schema=team");
        match open_store("postgres://app:secret@db/jobs?schema=Team") {
            Err(e @ Error::BadUrl { .. }) => {
                assert!(e.to_string().contains("schema"), "{e}");
                assert!(!e.to_string().contains("secret"), "password echoed: {e}");
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a bad schema accepted"),
        }
        let etcd = open_store("etcd://app:pw@h1:2379,h2:2379/svc").expect("an etcd URL");
        assert_eq!(etcd.describe(), "etcd://app:***@h1:2379,h2:2379/svc");
        assert!(matches!(
            open_store("etcd://app:pw@h1"),
            Err(Error::BadUrl { .. })
        ));
        for url in ["mysql://h:3306", "ftp://x"] {
            assert!(
                matches!(open_store(url), Err(Error::UnsupportedStore { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn every_backend_scheme_names_its_feature() {
        for (scheme, feature) in [
            ("sqlite", "sqlite"),
            ("zk", "zookeeper"),
            ("postgres", "postgres"),
            ("postgresql", "postgres"),
            ("etcd", "etcd"),
        ] {
            assert_eq!(backend_feature(scheme), Some(feature), "{scheme}");
        }
        for scheme in ["memory", "mysql", "ftp"] {
            assert_eq!(backend_feature(scheme), None, "{scheme}");
        }
    }

    /// Runs in the builds CI makes with backends left out (`scripts/test`): each compiled-out
    /// backend's URL is the typed error naming its feature, not "unsupported".
    #[test]
    fn compiled_out_backends_are_named_with_their_feature() {
        let compiled = [
            (
                "sqlite:///tmp/rb-never-created.db",
                "sqlite",
                cfg!(feature = "sqlite"),
            ),
            ("zk://h1:2181/x", "zookeeper", cfg!(feature = "zookeeper")),
            (
                "postgres://u:secret@db:5432/x",
                "postgres",
                cfg!(feature = "postgres"),
            ),
            ("etcd://h1:2379/x", "etcd", cfg!(feature = "etcd")),
        ];
        for (url, feature, _) in compiled.into_iter().filter(|(_, _, on)| !on) {
            match open_store(url) {
                Err(e @ Error::BackendNotCompiled { feature: f, .. }) => {
                    assert_eq!(f, feature, "{url}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("features = [\"{feature}\"]")),
                        "{msg}"
                    );
                    assert!(!msg.contains("secret"), "password echoed: {msg}");
                }
                Err(other) => panic!("{url}: {other}"),
                Ok(_) => panic!("{url}: opened without its backend"),
            }
        }
        assert!(matches!(
            open_store("mysql://h:3306"),
            Err(Error::UnsupportedStore { .. })
        ));
    }
}
