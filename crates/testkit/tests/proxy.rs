//! The fault proxy: forwards, blackholes without losing bytes, heals, resets, and cleans up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rebalanser_testkit::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// An upstream that echoes every byte, tagged with `tag` so tests can tell upstreams apart.
async fn echo_server(tag: u8) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = vec![tag];
                            out.extend_from_slice(&buf[..n]);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

async fn read_some(s: &mut TcpStream, within: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(n)) => Some(Ok(buf[..n].to_vec())),
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => None,
    }
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>> {
    s.write_all(msg).await?;
    match read_some(s, Duration::from_secs(2)).await {
        Some(r) => Ok(r?),
        None => anyhow::bail!("no reply within 2 s"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn blackhole_stops_all_bytes_and_heal_resumes_without_loss() -> Result<()> {
    let (up, _server) = echo_server(b'A').await?;
    let proxy = FaultProxy::start(up)?;
    let port = proxy.addr().port();
    ensure!(
        (10000..32000).contains(&port),
        "port {port} outside the test range"
    );
    let mut c = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(roundtrip(&mut c, b"hi").await?, b"Ahi");

    proxy.blackhole();
    assert!(proxy.is_blackholed());
    c.write_all(b"lost?").await?;
    assert!(
        read_some(&mut c, Duration::from_millis(300))
            .await
            .is_none(),
        "bytes flowed while blackholed"
    );
    // A connection made during the blackhole is accepted but silent.
    let mut late = TcpStream::connect(proxy.addr()).await?;
    late.write_all(b"late").await?;
    assert!(read_some(&mut late, Duration::from_millis(300))
        .await
        .is_none());

    proxy.heal();
    // Nothing sent during the blackhole was dropped.
    let got = read_some(&mut c, Duration::from_secs(2))
        .await
        .expect("no reply after heal")?;
    assert_eq!(got, b"Alost?");
    let got = read_some(&mut late, Duration::from_secs(2))
        .await
        .expect("held connection not forwarded")?;
    assert_eq!(got, b"Alate");
    assert_eq!(roundtrip(&mut c, b"again").await?, b"Aagain");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_all_closes_every_connection() -> Result<()> {
    let (up, _server) = echo_server(b'A').await?;
    let proxy = FaultProxy::start(up)?;
    let mut a = TcpStream::connect(proxy.addr()).await?;
    let mut b = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(roundtrip(&mut a, b"1").await?, b"A1");
    assert_eq!(roundtrip(&mut b, b"2").await?, b"A2");
    assert_eq!(proxy.active_connections(), 2);
    proxy.reset_all();
    for s in [&mut a, &mut b] {
        match read_some(s, Duration::from_secs(2)).await {
            Some(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            other => panic!("expected a reset, got {other:?}"),
        }
    }
    // The proxy itself keeps serving.
    let mut c = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(roundtrip(&mut c, b"3").await?, b"A3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn set_upstream_moves_new_connections_only() -> Result<()> {
    let (up_a, _a) = echo_server(b'A').await?;
    let (up_b, _b) = echo_server(b'B').await?;
    let proxy = FaultProxy::start(up_a)?;
    let mut old = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(roundtrip(&mut old, b"x").await?, b"Ax");
    proxy.set_upstream(up_b);
    let mut new = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(roundtrip(&mut new, b"y").await?, b"By");
    assert_eq!(roundtrip(&mut old, b"z").await?, b"Az");
    // An upstream that refuses: the client is refused too (reset), not left hanging.
    let closed = TcpListener::bind("127.0.0.1:0").await?;
    let closed_addr = closed.local_addr()?;
    drop(closed);
    proxy.set_upstream(closed_addr);
    // The reset may even beat `connect` (which then reports it).
    let refused = match TcpStream::connect(proxy.addr()).await {
        Err(e) => e.kind(),
        Ok(mut s) => match read_some(&mut s, Duration::from_secs(2)).await {
            Some(Err(e)) => e.kind(),
            other => panic!("expected a reset, got {other:?}"),
        },
    };
    assert_eq!(refused, std::io::ErrorKind::ConnectionReset);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_closes_the_listener_and_every_connection() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = FaultProxy::start(listener.local_addr()?)?;
    let addr = proxy.addr();
    let mut client = TcpStream::connect(addr).await?;
    let (mut upstream_side, _) =
        tokio::time::timeout(Duration::from_secs(2), listener.accept()).await??;
    drop(proxy);
    // Both ends see the proxy's sockets close: its tasks are gone, not leaked.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(2), upstream_side.read(&mut buf)).await?;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "upstream side still open: {n:?}"
    );
    let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0) | Err(_)), "client side still open: {n:?}");
    // The accept task is aborted, not joined: its listener closes when the runtime next
    // polls it, which may be a moment after the connections were seen closed (CI saw one
    // connect still accepted).
    let t = Instant::now();
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "listener still accepting 2 s after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let err = FaultProxy::start("127.0.0.1:1".parse().unwrap()).expect_err("no runtime");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}
