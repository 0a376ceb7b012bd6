//! The SDK-facing wing: the User Storage Service trait that the campaign SDKs call, the FME SDKs' connector
//! ([`FeatureStorage`]), and moving the SDKs' JSON in
//! and out of a store (`json.rs`: import and export in every SDK's key style, through the one dialect table of
//! [`crate::SdkField`]).
//!
//! Everything here uses only [`Store`]'s public API; nothing below this wing knows of SDKs' JSON.

#[cfg(feature = "json")]
mod json;

use crate::model::{CampaignUserMap, FeatureRecord};
use crate::store::Store;
use crate::{Error, Result};

#[cfg(feature = "json")]
pub use json::{
    ImportOptions, ImportReport, MAX_REPORTED_SKIPS, OnError, Position, SkippedRecord,
    parse_json_record, to_json_record,
};

/// A User Storage Service, as A/B-testing SDKs ask the host application for one: it keeps the variation first
/// assigned to a user, so the user keeps it when the campaign's settings change.
///
/// Object safe: a `Box<dyn UserStorageService>` or `Arc<dyn UserStorageService>` works. Any backend reports its
/// failures as [`Error`]: the local store with the file and offset concerned, a network backend with
/// [`Error::Backend`] (its [`crate::BackendErrorKind`] says whether retrying can help, `source()` gives the
/// backend's own error).
pub trait UserStorageService: Send + Sync {
    /// The stored map of `user_id` in `campaign_key`, or `None`.
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>, Error>;
    /// Stores `map`, replacing any earlier one for the same user and campaign.
    fn set(&self, map: &CampaignUserMap) -> Result<(), Error>;
}

impl UserStorageService for Store {
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        Store::get(self, user_id, campaign_key)
    }

    fn set(&self, map: &CampaignUserMap) -> Result<()> {
        Store::set(self, map)
    }
}

/// The storage connector of VWO's FME SDKs (Node, Python, Java, Go, PHP, .NET): they call `get(featureKey,
/// userId)` before deciding a flag and `set(data)` after, with one [`FeatureRecord`] per user and feature flag
/// (and per mutually exclusive group, under `_vwo_meta_meg_<groupId>`). docs/FME.md describes the record.
///
/// Object safe, like [`UserStorageService`]. An SDK treats a failing `get` as "no stored decision", so a
/// connector built on this trait may log an error and answer `None`.
pub trait FeatureStorage: Send + Sync {
    /// The record of `user_id` for `feature_key`, or `None`.
    fn get_feature(&self, feature_key: &str, user_id: &str)
    -> Result<Option<FeatureRecord>, Error>;
    /// Stores `record`, replacing any earlier one for the same user and feature key.
    fn set_feature(&self, record: &FeatureRecord) -> Result<(), Error>;
}

impl FeatureStorage for Store {
    fn get_feature(&self, feature_key: &str, user_id: &str) -> Result<Option<FeatureRecord>> {
        Store::get_feature(self, feature_key, user_id)
    }

    fn set_feature(&self, record: &FeatureRecord) -> Result<()> {
        Store::set_feature(self, record)
    }
}
