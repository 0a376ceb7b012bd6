//! The front door: the User Storage Service interface that A/B-testing SDKs call, and the map they store.

use serde::{Deserialize, Deserializer, Serialize};

use crate::store::Store;
use crate::{Error, Result};

/// What separates goal identifiers in [`CampaignUserMap::goal_identifier`].
pub const GOAL_DELIMITER: &str = "_vwo_";

/// A User Storage Service, as A/B-testing SDKs ask the host application for one: it keeps the variation first
/// assigned to a user, so the user keeps it when the campaign's settings change.
///
/// Object safe: a `Box<dyn UserStorageService>` or `Arc<dyn UserStorageService>` works.
pub trait UserStorageService: Send + Sync {
    /// The stored map of `user_id` in `campaign_key`, or `None`.
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>, Error>;
    /// Stores `map`, replacing any earlier one for the same user and campaign.
    fn set(&self, map: &CampaignUserMap) -> Result<(), Error>;
}

/// One user's assignment in one campaign (the SDKs' `userStorageData`).
///
/// Its JSON form uses the SDKs' camelCase keys (`userId`, `campaignKey`, `variationName`, `goalIdentifier`,
/// absent when `None`), and also reads what other SDKs write: `goalIdentifiers` (plural), snake_case keys, and a
/// goal list given as an array of strings (joined with [`GOAL_DELIMITER`]). Unknown keys such as `metaData` are
/// ignored here; [`Store::set_with_meta`] keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CampaignUserMap {
    /// The user's id as passed to the SDK.
    #[serde(alias = "user_id")]
    pub user_id: String,
    /// The campaign's unique key.
    #[serde(alias = "campaign_key")]
    pub campaign_key: String,
    /// The variation the user was assigned.
    #[serde(alias = "variation_name")]
    pub variation_name: String,
    /// Goals already tracked for this user and campaign, joined by `_vwo_`, kept byte for byte (some SDKs write
    /// a leading or trailing delimiter).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "goalIdentifiers",
        alias = "goal_identifier",
        alias = "goal_identifiers",
        deserialize_with = "goals_from_json"
    )]
    pub goal_identifier: Option<String>,
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
pub(crate) fn goals_from_json<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
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

impl UserStorageService for Store {
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>, Error> {
        Store::get(self, user_id, campaign_key)
    }

    fn set(&self, map: &CampaignUserMap) -> Result<(), Error> {
        Store::set(self, map)
    }
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
