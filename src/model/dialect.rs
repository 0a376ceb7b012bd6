//! The one table of the keys under which the SDKs write each field of a user storage record.
//!
//! VWO's SDKs agree on the fields but not on their names: Node, Java and .NET write camelCase (`userId`), Python
//! writes the goal list as `goalIdentifiers` (plural), Ruby snake_case (`user_id`), .NET-style code sometimes
//! PascalCase (`UserId`). [`CampaignUserMap`](super::CampaignUserMap)'s JSON form, the importer and the bindings
//! all read keys through [`SdkField::from_key`], so a new spelling is added here once.

/// A field of the SDKs' user storage record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SdkField {
    /// The user's id.
    UserId,
    /// The campaign's key.
    CampaignKey,
    /// The assigned variation's name.
    VariationName,
    /// The goals tracked so far (a string joined by `_vwo_`, or an array of strings).
    GoalIdentifier,
    /// Extra data some SDKs attach, kept as JSON text.
    MetaData,
}

/// Every field with the names it is written under; the first name is the one ussdb writes.
const TABLE: &[(SdkField, &[&str])] = &[
    (SdkField::UserId, &["userId", "user_id"]),
    (SdkField::CampaignKey, &["campaignKey", "campaign_key"]),
    (
        SdkField::VariationName,
        &["variationName", "variation_name"],
    ),
    (
        SdkField::GoalIdentifier,
        &[
            "goalIdentifier",
            "goalIdentifiers",
            "goal_identifier",
            "goal_identifiers",
        ],
    ),
    (SdkField::MetaData, &["metaData", "meta_data"]),
];

impl SdkField {
    /// Every field, in record order.
    pub const ALL: [SdkField; 5] = [
        SdkField::UserId,
        SdkField::CampaignKey,
        SdkField::VariationName,
        SdkField::GoalIdentifier,
        SdkField::MetaData,
    ];

    /// The field an SDK means by `key`, if any: one of its names in any letter case (`UserId`, `USER_ID`), since
    /// code that serialises the record itself (.NET's default, Go's `UserID`) may capitalise differently.
    pub fn from_key(key: &str) -> Option<SdkField> {
        // The exact spelling first: it is what nearly every record has, and the cheaper comparison.
        TABLE
            .iter()
            .find(|(_, names)| names.contains(&key))
            .or_else(|| {
                TABLE
                    .iter()
                    .find(|(_, names)| names.iter().any(|name| name.eq_ignore_ascii_case(key)))
            })
            .map(|&(field, _)| field)
    }

    /// The names this field is read under; the first is the one written.
    pub fn names(self) -> &'static [&'static str] {
        TABLE
            .iter()
            .find(|(field, _)| *field == self)
            .map_or(&[], |&(_, names)| names)
    }

    /// The name ussdb writes (camelCase, as the Node, Java and .NET SDKs do).
    pub fn name(self) -> &'static str {
        self.names().first().copied().unwrap_or_default()
    }

    /// The message for a record that lacks this field, listing the names it is accepted under.
    pub(crate) fn missing(self) -> String {
        format!(
            "missing field `{}` (accepted names: {}, in any letter case)",
            self.name(),
            self.names().join(", ")
        )
    }

    /// The message for a record that gives this field twice (e.g. as `userId` and `user_id`): which one was meant
    /// is not knowable, so the record is refused rather than one of them silently kept.
    pub(crate) fn repeated(self) -> String {
        format!(
            "field `{}` is given more than once (under the names {}, in any letter case)",
            self.name(),
            self.names().join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_names_and_every_name_maps_back() {
        for field in SdkField::ALL {
            assert!(!field.names().is_empty(), "{field:?}");
            for name in field.names() {
                assert_eq!(SdkField::from_key(name), Some(field), "{name}");
            }
        }
        assert_eq!(SdkField::from_key("somethingElse"), None);
        for (key, field) in [
            ("UserId", SdkField::UserId),
            ("USER_ID", SdkField::UserId),
            ("UserID", SdkField::UserId),
            ("CampaignKey", SdkField::CampaignKey),
            ("VariationName", SdkField::VariationName),
            ("GoalIdentifiers", SdkField::GoalIdentifier),
            ("MetaData", SdkField::MetaData),
        ] {
            assert_eq!(SdkField::from_key(key), Some(field), "{key}");
        }
        assert_eq!(SdkField::from_key("user-id"), None);
    }
}
