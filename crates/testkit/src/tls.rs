//! Certificates for TLS tests: a throw-away CA, a server certificate for `127.0.0.1` and
//! `localhost`, and a client certificate, as PEM files in a temp dir of their own.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// The files (see the module docs). Deleted when dropped.
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// The CA certificate: what a client trusts.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (CN `rebalanser`) and key, for servers that ask for one.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    pub fn new() -> Result<TestCerts> {
        let dir = tempfile::Builder::new()
            .prefix("rbtest-tls-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rebalanser test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "rebalanser");
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &ca)?;

        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).with_context(|| format!("cannot write {}", p.display()))?;
            Ok(p)
        };
        Ok(TestCerts {
            ca: write("ca.pem", ca.pem())?,
            server_cert: write("server.pem", server_cert.pem())?,
            server_key: write("server-key.pem", server_key.serialize_pem())?,
            client_cert: write("client.pem", client_cert.pem())?,
            client_key: write("client-key.pem", client_key.serialize_pem())?,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
