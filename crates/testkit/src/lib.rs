//! Test fixtures for Rebalanser's integration tests: real ZooKeeper servers that tests can crash,
//! pause and partition ([`ZkEnsemble`]), real etcd clusters that tests can crash and pause
//! ([`EtcdCluster`]), and a TCP proxy that fails one client's network on
//! demand ([`FaultProxy`]).
//!
//! A backend is only as good as its behaviour under the faults the protocol is built for, and
//! those faults must be real: a real server's timeouts, a real leader election, a real
//! half-partitioned follower. The fixtures make each fault one call, clean up after themselves
//! even when a test is killed, and fail loudly (never skip) when the machine lacks a server.
//!
//! Requirements (all Debian packages): `zookeeper` (with Java), `nftables` and `iproute2` for
//! [`ZkEnsemble::cut_from_leader`], and root for nftables; `etcd-server` and `etcd-client` for
//! [`EtcdCluster`].

mod clock;
mod etcd;
mod nft;
mod postgres;
mod proxy;
mod rabbitmq;
mod spawn;
mod tls;
mod zk;

pub use clock::boottime_ns;
pub use etcd::{EtcdCluster, EtcdOptions, EtcdTls};
pub use postgres::Postgres;
pub use proxy::FaultProxy;
pub use rabbitmq::RabbitMq;
pub use spawn::pid_alive;
pub use tls::TestCerts;
pub use zk::{zkcli, ZkEnsemble, ZkOptions, ZkTls};

/// The fixtures are shared between a test's threads and tasks.
const _: fn() = || {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<ZkEnsemble>();
    is_send_sync::<FaultProxy>();
    is_send_sync::<RabbitMq>();
    is_send_sync::<Postgres>();
    is_send_sync::<EtcdCluster>();
};
