//! Scraping `--metrics-addr`: a free port, one plain HTTP GET of /metrics, and the value of a
//! series in the Prometheus text format.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `127.0.0.1:PORT` with a port free a moment ago (the kernel picked it; a race with another
/// process taking it meanwhile is possible but unlikely).
pub fn free_addr() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// The body of `GET http://ADDR/metrics`.
pub fn scrape(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}: {resp:?}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics on {addr}: {head}");
    }
    Ok(body.to_string())
}

/// The labels of one sample line, `name{k="v",...} value`, in order.
fn labels(series: &str) -> Vec<(&str, &str)> {
    let Some((_, rest)) = series.split_once('{') else {
        return Vec::new();
    };
    rest.trim_end_matches('}')
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k, v.trim_end_matches('"')))
        })
        .collect()
}

/// The sum of the samples `name` whose labels include every pair of `want`; `None` when no
/// sample matches (the series does not exist yet).
pub fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let n = series.split('{').next().unwrap_or(series);
        if n != name {
            continue;
        }
        let ls = labels(series);
        if !want.iter().all(|w| ls.contains(w)) {
            continue;
        }
        if let Ok(v) = v.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
