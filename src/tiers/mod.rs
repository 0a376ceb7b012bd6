//! Network tiers in front of or beside the local log: [`RedisStore`] keeps user storage maps in Redis under the
//! same keys and JSON as VWO's Redis user-storage helpers, so servers of one fleet share their assignments.
//!
//! Every Redis failure is an [`crate::Error::Backend`] with backend `"redis"`; targets never carry a password.
//! `docs/FLEET.md` states the merge rule that makes a fleet's assignments sticky.

mod redis;

pub use self::redis::{DEFAULT_TIMEOUT, RedisConfig, RedisStore};
