//! What the store holds, as the SDKs see it: [`CampaignUserMap`] (one user's assignment in one campaign, as the
//! campaign SDKs store it), its goal list helpers, the one table of the key names each SDK writes ([`SdkField`]),
//! and [`FeatureRecord`] (one user's decision for one feature flag, as the FME SDKs store it), and the limits of ids.
//!
//! Pure data: nothing here does I/O or knows how records are stored.

mod dialect;
mod feature;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

pub use dialect::SdkField;
pub(crate) use feature::IdParts;
pub use feature::{FeatureRecord, Field, FmeField, FmeId, MEG_PREFIXES};

/// Longest user id, campaign key or feature key, in bytes of UTF-8.
pub const MAX_ID_LEN: usize = 1024;

/// Checks one id against the limits: [`Error::InvalidKey`] naming `field` if it is empty or too long.
#[inline]
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(id_error(field, id));
    }
    Ok(())
}

/// The error of [`check_id`], apart from its inlined test.
#[cold]
fn id_error(field: &'static str, id: &str) -> Error {
    if id.is_empty() {
        Error::invalid_key(field, id, "must not be empty")
    } else {
        Error::invalid_key(
            field,
            id,
            format!("is {} bytes long, the limit is {MAX_ID_LEN}", id.len()),
        )
    }
}

/// What separates goal identifiers in [`CampaignUserMap::goal_identifier`].
pub const GOAL_DELIMITER: &str = "_vwo_";

/// One user's assignment in one campaign (the SDKs' `userStorageData`).
///
/// Its JSON form uses the SDKs' camelCase keys (`userId`, `campaignKey`, `variationName`, `goalIdentifier`,
/// absent when `None`), and also reads what other SDKs write (every name [`SdkField`] lists: `goalIdentifiers`
/// (plural), snake_case keys, ...) and a goal list given as an array of strings (joined with
/// [`GOAL_DELIMITER`]). Unknown keys such as `metaData` are ignored here; `Store::set_with_meta` keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignUserMap {
    /// The user's id as passed to the SDK.
    pub user_id: String,
    /// The campaign's unique key.
    pub campaign_key: String,
    /// The variation the user was assigned.
    pub variation_name: String,
    /// Goals already tracked for this user and campaign, joined by `_vwo_`, kept byte for byte (some SDKs write
    /// a leading or trailing delimiter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal_identifier: Option<String>,
}

impl<'de> Deserialize<'de> for CampaignUserMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CampaignUserMap, D::Error> {
        deserializer.deserialize_map(MapVisitor)
    }
}

/// Reads a map's keys through the [`SdkField`] table, so every SDK's key style is read the same way here and by
/// the importer.
struct MapVisitor;

impl<'de> Visitor<'de> for MapVisitor {
    type Value = CampaignUserMap;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a user storage record (userId, campaignKey, variationName, goalIdentifier)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CampaignUserMap, A::Error> {
        read_record(&mut map, |map| map.next_value::<de::IgnoredAny>().map(drop))
    }
}

/// Reads one user storage record from a map, every key through the [`SdkField`] table (a key given twice refuses
/// the record); `meta` reads the `metaData` value. The one reader of the SDKs' records: [`CampaignUserMap`]'s JSON
/// form ignores the metadata, the importer keeps it.
pub(crate) fn read_record<'de, A: MapAccess<'de>>(
    map: &mut A,
    mut meta: impl FnMut(&mut A) -> Result<(), A::Error>,
) -> Result<CampaignUserMap, A::Error> {
    let (mut user_id, mut campaign_key, mut variation_name) = (None, None, None);
    let mut goal_identifier = None;
    let mut seen = [false; SdkField::ALL.len()];
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        let Some(field) = SdkField::from_key(&key) else {
            map.next_value::<de::IgnoredAny>()?;
            continue;
        };
        if let Some(seen) = seen.get_mut(field as usize) {
            if *seen {
                return Err(de::Error::custom(field.repeated()));
            }
            *seen = true;
        }
        let slot = match field {
            SdkField::UserId => &mut user_id,
            SdkField::CampaignKey => &mut campaign_key,
            SdkField::VariationName => &mut variation_name,
            SdkField::GoalIdentifier => {
                goal_identifier = map.next_value::<GoalList>()?.0;
                continue;
            }
            SdkField::MetaData => {
                meta(map)?;
                continue;
            }
        };
        *slot = Some(map.next_value::<String>()?);
    }
    let missing = |field: SdkField| de::Error::custom(field.missing());
    Ok(CampaignUserMap {
        user_id: user_id.ok_or_else(|| missing(SdkField::UserId))?,
        campaign_key: campaign_key.ok_or_else(|| missing(SdkField::CampaignKey))?,
        variation_name: variation_name.ok_or_else(|| missing(SdkField::VariationName))?,
        goal_identifier,
    })
}

/// A goal list as any SDK writes it: a string, null, or an array of strings (joined with [`GOAL_DELIMITER`]).
pub(crate) struct GoalList(pub(crate) Option<String>);

impl<'de> Deserialize<'de> for GoalList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<GoalList, D::Error> {
        goals_from_json(deserializer).map(GoalList)
    }
}

impl CampaignUserMap {
    /// A map without goals.
    pub fn new(
        user_id: impl Into<String>,
        campaign_key: impl Into<String>,
        variation_name: impl Into<String>,
    ) -> CampaignUserMap {
        CampaignUserMap {
            user_id: user_id.into(),
            campaign_key: campaign_key.into(),
            variation_name: variation_name.into(),
            goal_identifier: None,
        }
    }

    /// The goals tracked so far, in order (empty pieces from a leading or trailing delimiter are skipped).
    pub fn goals(&self) -> impl Iterator<Item = &str> {
        self.goal_identifier
            .as_deref()
            .unwrap_or_default()
            .split(GOAL_DELIMITER)
            .filter(|g| !g.is_empty())
    }

    /// True when `goal` was already tracked.
    pub fn has_goal(&self, goal: &str) -> bool {
        self.goals().any(|g| g == goal)
    }

    /// Appends `goal` to the goal list (as the SDKs do on track); false, and no change, if it was there.
    pub fn add_goal(&mut self, goal: &str) -> bool {
        if self.has_goal(goal) {
            return false;
        }
        match &mut self.goal_identifier {
            Some(goals) if !goals.is_empty() => {
                if !goals.ends_with(GOAL_DELIMITER) {
                    goals.push_str(GOAL_DELIMITER);
                }
                goals.push_str(goal);
            }
            slot => *slot = Some(goal.to_owned()),
        }
        true
    }
}

/// Reads a goal list written as a string, null, or an array of strings.
fn goals_from_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Goals {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Goals>::deserialize(deserializer)? {
        None => None,
        Some(Goals::One(s)) => Some(s),
        Some(Goals::Many(list)) => Some(list.join(GOAL_DELIMITER)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_camel_case_and_omits_absent_goals() {
        let mut map = CampaignUserMap::new("u", "c", "v");
        assert_eq!(
            serde_json::to_string(&map).expect("serializes"),
            r#"{"userId":"u","campaignKey":"c","variationName":"v"}"#
        );
        map.goal_identifier = Some("a_vwo_b".into());
        let json = serde_json::to_string(&map).expect("serializes");
        assert_eq!(
            json,
            r#"{"userId":"u","campaignKey":"c","variationName":"v","goalIdentifier":"a_vwo_b"}"#
        );
        assert_eq!(
            serde_json::from_str::<CampaignUserMap>(&json).expect("parses"),
            map
        );
    }

    #[test]
    fn json_reads_every_sdk_dialect() {
        let want = CampaignUserMap {
            goal_identifier: Some("_vwo_g1_vwo_g2".into()),
            ..CampaignUserMap::new("u", "c", "v")
        };
        for json in [
            r#"{"userId":"u","campaignKey":"c","variationName":"v","goalIdentifiers":"_vwo_g1_vwo_g2"}"#,
            r#"{"user_id":"u","campaign_key":"c","variation_name":"v","goal_identifier":"_vwo_g1_vwo_g2"}"#,
            r#"{"userId":"u","campaignKey":"c","variationName":"v","goalIdentifier":"_vwo_g1_vwo_g2","metaData":{"a":1}}"#,
            r#"{"userId":"u","campaignKey":"c","variationName":"v","goalIdentifiers":["","g1","g2"]}"#,
        ] {
            assert_eq!(
                serde_json::from_str::<CampaignUserMap>(json).expect(json),
                want,
                "{json}"
            );
        }
        let none: CampaignUserMap = serde_json::from_str(
            r#"{"userId":"u","campaignKey":"c","variationName":"v","goalIdentifier":null}"#,
        )
        .expect("parses");
        assert_eq!(none.goal_identifier, None);
    }

    #[test]
    fn goals_append_with_the_delimiter_and_detect_repeats() {
        let mut map = CampaignUserMap::new("u", "c", "v");
        assert!(map.add_goal("buy-now-clicked"));
        assert!(map.add_goal("product-bought"));
        assert!(!map.add_goal("buy-now-clicked"));
        assert_eq!(
            map.goal_identifier.as_deref(),
            Some("buy-now-clicked_vwo_product-bought")
        );
        let mut java = CampaignUserMap {
            goal_identifier: Some("a_vwo_".into()),
            ..map.clone()
        };
        assert!(java.add_goal("b"));
        assert_eq!(java.goal_identifier.as_deref(), Some("a_vwo_b"));
    }
}
