//! `--metrics-addr HOST:PORT` (`member run`, `bench`): the members' metrics (the library's
//! `rebalanser::metrics`, listed in docs/metrics.md) served as Prometheus text at
//! `http://HOST:PORT/metrics`.

use std::net::{SocketAddr, ToSocketAddrs};

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

/// Bucket bounds, in seconds, of every histogram: every one the library records is a
/// latency, from a keepalive on a local store (well under 1 ms) to a handover that waits for
/// a crashed owner's session to expire (a TTL, tens of seconds). Without buckets the exporter
/// would render summaries, which Prometheus cannot aggregate across members.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464, or
    /// 0.0.0.0:9464 for every interface); docs/metrics.md lists them.
    #[arg(long, value_name = "HOST:PORT", value_parser = addr_arg)]
    pub metrics_addr: Option<SocketAddr>,
}

/// Parses `HOST:PORT`, resolving a host name (its first address).
fn addr_arg(s: &str) -> Result<SocketAddr, String> {
    let bad = |why: String| format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:9464): {why}");
    let mut addrs = s.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("the host name has no address".to_string()))
}

/// Installs the Prometheus recorder and starts its HTTP listener on `addr`, on the current
/// tokio runtime. Call it before any member joins: a member takes its metric handles when it
/// joins. Fails when `addr` cannot be bound (in use, not local, no permission).
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(SECONDS_BUCKETS)
        .and_then(PrometheusBuilder::install)
        .map_err(|e| match e {
            BuildError::FailedToCreateHTTPListener(why) => {
                format!("--metrics-addr {addr}: cannot listen there: {why}")
            }
            other => format!("--metrics-addr {addr}: cannot start the metrics exporter: {other}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            addr_arg("127.0.0.1:9464"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(addr_arg("[::1]:80").map(|a| a.port()), Ok(80));
        assert!(addr_arg("localhost:9464").is_ok_and(|a| a.ip().is_loopback()));
        for bad in ["9464", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ""] {
            let e = addr_arg(bad).expect_err(bad);
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}
