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
//! Moving data in and out uses the SDKs' own JSON (any SDK's key style in, camelCase JSON Lines out), and
//! [`Store::verify`] checks every record and the index:
//!
//! ```
//! use ussdb::{ImportOptions, Store};
//!
//! # fn main() -> ussdb::Result<()> {
//! # let dir = tempfile::tempdir().expect("temp dir");
//! let store = Store::open(dir.path())?;
//! let ruby_sdk_data = r#"{"user_id":"u1","campaign_key":"home","variation_name":"Control","goal_identifier":"_vwo_buy"}"#;
//! let report = store.import_json(ruby_sdk_data.as_bytes(), &ImportOptions::default())?;
//! assert_eq!(report.imported, 1);
//!
//! let mut exported = Vec::new();
//! store.export_json(&mut exported)?;
//! assert_eq!(
//!     String::from_utf8_lossy(&exported),
//!     "{\"userId\":\"u1\",\"campaignKey\":\"home\",\"variationName\":\"Control\",\"goalIdentifier\":\"_vwo_buy\"}\n"
//! );
//! assert!(store.verify()?.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! VWO's FME SDKs (Feature Management and Experimentation) keep one [`FeatureRecord`] per user and feature flag
//! through a storage connector, `get(featureKey, userId)` / `set(data)`; the same store serves them
//! ([`FeatureStorage`]), apart from the campaign mappings, with every member of their JSON kept as it came:
//!
//! ```
//! use ussdb::{FeatureRecord, FeatureStorage, Store};
//!
//! # fn main() -> ussdb::Result<()> {
//! # let dir = tempfile::tempdir().expect("temp dir");
//! let store = Store::open(dir.path())?;
//! let json = r#"{"featureKey":"checkout","userId":"user-42","experimentId":21,"experimentKey":"checkout_ab1","experimentVariationId":2,"rolloutId":null}"#;
//! let connector: &dyn FeatureStorage = &store;
//! connector.set_feature(&FeatureRecord::from_json(json)?)?;
//! let back = connector.get_feature("checkout", "user-42")?.expect("stored");
//! assert_eq!(back.to_json(), r#"{"featureKey":"checkout","userId":"user-42","rolloutId":null,"experimentId":21,"experimentKey":"checkout_ab1","experimentVariationId":2}"#);
//! # Ok(())
//! # }
//! ```
//!
//! Durability is chosen per store with [`Options::durability`]; see [`Durability`] for what each mode can lose.
//! The on-disk format is documented byte by byte in `docs/FORMAT.md`; `docs/GUIDE.md` covers operations (sizing,
//! backups, verify, compaction) and `docs/ARCHITECTURE.md` the code.

#![deny(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

// Layers, bottom to top: a module imports only from its own group or the groups above it (CI checks that the
// module graph has no cycle). docs/ARCHITECTURE.md has the map and the order within each group.
//
// base: pure data and the file layer
mod durability;
mod error;
mod model;
mod options;
mod record;
mod vfs;
// storage: bytes on disk
mod codec;
mod control;
mod dir;
mod hint;
mod index;
mod index_file;
mod manifest;
mod map;
mod seed;
mod segment;
mod tail;
// the engine: bytes in, bytes out
mod engine;
mod repair;
// checks and the handle
mod notifier;
mod store;
mod verify;
// fronts
mod sdk;
// the fleet tiers (Redis), on the public API only
#[cfg(feature = "redis")]
mod tiers;

/// Fuzzing entry points over the private decoders. Not part of the API: it may change in any release.
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod testing;

pub use codec::{MAX_ID_LEN, MAX_VALUE_LEN};
pub use durability::{DEFAULT_PERIODIC_INTERVAL, Durability};
pub use engine::{BackupReport, Batch};
pub use error::{BackendErrorKind, Error, Result};
pub use model::{
    CampaignUserMap, FeatureRecord, Field, FmeField, FmeId, GOAL_DELIMITER, MEG_PREFIXES, SdkField,
};
pub use options::{
    DEFAULT_COMPACTION_THRESHOLD, DEFAULT_SAVE_INDEX_FROM, DEFAULT_SEGMENT_SIZE, Options,
};
pub use repair::{Lost, RepairReport};
pub use sdk::{FeatureStorage, UserStorageService};
#[cfg(feature = "json")]
pub use sdk::{
    ImportOptions, ImportReport, MAX_REPORTED_SKIPS, OnError, Position, SkippedRecord,
    parse_json_record, to_json_record,
};
pub use store::{Durable, Entries, Entry, FeatureEntries, Stats, Store};
#[cfg(feature = "redis")]
pub use tiers::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FRESH_FOR, DEFAULT_RESPONSE_TIMEOUT, RedisConfig, RedisScan,
    RedisStore, TierOptions, TierStats, Tiered,
};
pub use verify::{Damage, VerifyReport, verify_dir, verify_dir_with_progress};
pub use vfs::{StdFile, StdVfs, VFile, Vfs};
