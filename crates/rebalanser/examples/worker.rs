// A minimal worker: `cargo run -p rebalanser --example worker -- [STORE_URL [GROUP]]` (URL also
// from $REBALANSER_STORE). Start several; add resources with `rebalanser resource add`.
use rebalanser::{Error, Lease, Member};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let store = (args.next().or(std::env::var("REBALANSER_STORE").ok()))
        .unwrap_or_else(|| "sqlite:///tmp/rebalanser-worker.db".into());
    let group = args.next().unwrap_or_else(|| "jobs".into());
    let builder = Member::builder(&group).store_url(&store);
    let mut member = builder.create_group_if_missing(true).join().await?;
    // One future for the whole run, so a Ctrl-C between two leases is not missed.
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            lease = member.next_lease() => match lease {
                Some(lease) => { tokio::spawn(serve(lease)); }
                None => return Ok(()), // the member stopped by itself
            },
            _ = &mut ctrl_c => break,
        }
    }
    // Drains first: each lease is revoked, `serve` returns, then the resource moves on.
    member.leave().await
}

async fn serve(lease: Lease) {
    println!("serving {} (token {})", lease.resource(), lease.token());
    // Work while the lease is valid (check before each access); stop once it is revoked.
    while lease.is_valid() {
        tokio::select! {
            _ = lease.revoked() => break,
            // One unit of work on lease.resource(), passing lease.token() where it fences.
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
    println!("stopped {}", lease.resource()); // dropping the lease lets the resource move
}
