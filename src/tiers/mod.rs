//! Running a fleet: the user storage of many servers kept in one Redis (or Valkey), standalone or Cluster.
//!
//! * [`RedisStore`]: a User Storage Service over Redis, compatible with VWO's Redis helpers' keys and values, with
//!   the fleet rule applied atomically per key.
//!   It also holds VWO's FME SDKs' records ([`FeatureStorage`](crate::FeatureStorage)) under keys of their own,
//!   replaced on every write as the local store does.
//! * [`Tiered`]: a local [`Store`](crate::Store) in front of a [`RedisStore`]: local reads, local durable writes,
//!   and a background shipper that keeps Redis up to date through a durable outbox.
//!
//! The fleet rule: **the first assignment wins, goals unite.** A `set` for a mapping that Redis already holds
//! keeps the stored variation, and the goal list becomes the union of the stored and the given goals. A user's
//! variation is the one the first server to store it chose, whichever server the user reaches next and whatever
//! the campaign's settings say by then, which is what sticky assignment means; and a goal tracked on one server
//! is never undone by another server's write of an older goal list.
//!
//! Built with the cargo feature `redis`. docs/FLEET.md is the operator's chapter.

mod config;
mod outbox;
mod redis;
mod tiered;
mod value;

pub use self::config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, RedisConfig};
pub use self::redis::{RedisScan, RedisStore};
pub use self::tiered::{DEFAULT_FRESH_FOR, TierOptions, TierStats, Tiered};
