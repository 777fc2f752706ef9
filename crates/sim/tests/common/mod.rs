//! Shared set-up of the hand-driven member scenarios.

use std::time::Duration;

use rebalanser_core::admin;
use rebalanser_core::layout::Layout;
use rebalanser_core::{Config, GroupId, MemberId, ResourceId, Time};
use rebalanser_store::{MemModel, ModelConfig};

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A store holding group "g" with `resources`.
pub fn group_store(model: ModelConfig, resources: &[&str]) -> (MemModel, Layout) {
    let layout = Layout::new(&GroupId::new("g").unwrap());
    let mut store = MemModel::new(model);
    store
        .apply(Time::ZERO, &admin::create_group(&layout))
        .unwrap();
    let ids: Vec<ResourceId> = resources
        .iter()
        .map(|r| ResourceId::new(*r).unwrap())
        .collect();
    store
        .apply(Time::ZERO, &admin::add_resources(&layout, &ids))
        .unwrap();
    (store, layout)
}

/// A member of group "g" with a 2 s session and the simulator's timings.
pub fn member_config(name: &str) -> Config {
    let mut c = Config::new(GroupId::new("g").unwrap(), MemberId::new(name).unwrap());
    c.session_ttl = ms(2000);
    c.safety_margin = ms(150);
    c.stop_timeout = ms(300);
    c.keepalive_interval = ms(200);
    c.op_timeout = ms(250);
    c.min_rebalance_interval = ms(0);
    c.resync_interval = ms(1000);
    c.leave_timeout = ms(3000);
    c.retry_delay = ms(40);
    c.validate().unwrap();
    c
}

/// Not every test crate uses all of it.
#[allow(dead_code)]
pub mod harness;
