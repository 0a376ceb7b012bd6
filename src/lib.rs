//! # ussdb
//!
//! An embedded, crash-safe, log-structured store for the *User Storage Service* of A/B-testing SDKs: it keeps
//! the variation first assigned to each user in each campaign, so assignments stay sticky when a campaign's
//! settings change. It runs inside the server's process: a `get` is a hash lookup plus one read, a `set` one
//! append.
//!
//! ```
//! use ussdb::{CampaignUserMap, Store, UserStorageService};
//!
//! # fn main() -> ussdb::Result<()> {
//! # let dir = tempfile::tempdir().expect("temp dir");
//! let store = Store::open(dir.path())?;
//! let mut map = CampaignUserMap::new("user-42", "checkout-test", "Variation-1");
//! store.set(&map)?;
//! assert_eq!(store.get("user-42", "checkout-test")?, Some(map.clone()));
//!
//! // A tracked goal is appended with the SDKs' `_vwo_` delimiter; last write wins.
//! map.add_goal("purchase");
//! store.set(&map)?;
//! let sdk_facing: &dyn UserStorageService = &store;
//! assert!(sdk_facing.get("user-42", "checkout-test")?.is_some_and(|m| m.has_goal("purchase")));
//! # Ok(())
//! # }
//! ```
//!
//! Durability is chosen per store with [`Options::durability`]; see [`Durability`] for what each mode can lose.
//! The on-disk format is documented byte by byte in `docs/FORMAT.md`.

mod codec;
mod engine;
mod error;
mod index;
mod log;
mod record;
mod recovery;
mod segment;
mod store;
mod uss;
mod vfs;

pub use codec::{MAX_ID_LEN, MAX_VALUE_LEN};
pub use engine::Entry;
pub use error::{Error, Result};
pub use store::{DEFAULT_SEGMENT_SIZE, Durability, Options, Stats, Store};
pub use uss::{CampaignUserMap, GOAL_DELIMITER, UserStorageService};
pub use vfs::{StdFile, StdVfs, VFile, Vfs};
