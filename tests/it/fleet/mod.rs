//! The fleet tiers against real Redis servers: `RedisStore` (VWO helpers' format, the fleet rule, bad input,
//! Cluster) and `Tiered` (four servers under random SDK traffic, Redis and tier crashes). Each test starts its own
//! `redis-server` (see `servers.rs`) and fails, naming the install command, when there is none.

#[cfg(feature = "cli")]
mod cli;
mod fme;
mod redis_store;
mod servers;
mod store;
mod tiered;

use std::collections::BTreeSet;

use ussdb::CampaignUserMap;

/// The goals of a map as a set.
pub fn goal_set(map: &CampaignUserMap) -> BTreeSet<String> {
    map.goals().map(str::to_owned).collect()
}
