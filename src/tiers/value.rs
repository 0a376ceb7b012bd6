//! The values under the Redis keys: the JSON VWO's helpers write, and the fleet's merge rule.
//!
//! Pure functions: nothing here talks to Redis.
//!
//! * A new mapping is written as VWO's Node SDK hands it to its Redis helper, which stores
//!   `JSON.stringify(properties)`: `{"userId":…,"variationName":…,"campaignKey":…,"goalIdentifier":…}` in that
//!   order, compact, `goalIdentifier` left out when there is none. So a key written here is byte for byte the key
//!   the helper would have written.
//! * Reading accepts every key style the SDKs write (through [`crate::SdkField`]), any key order and spacing
//!   (Python's `json.dumps` puts a space after `:` and `,`).
//! * Rewriting an existing value changes only its goal list; every other field, known or not (`metaData`, fields
//!   of a newer writer), is kept byte for byte and in place.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::config::BACKEND;
use crate::{BackendErrorKind, CampaignUserMap, Error, FeatureRecord, Result, SdkField};

/// The fleet's rule for a `set` of `incoming` where `stored` is already kept: the first assignment wins (the
/// stored variation stays), and goal lists are merged as a set union (the stored goals in their order, then the
/// incoming ones not yet there, in theirs). Returns `stored` unchanged (`==`) when `incoming` adds nothing.
pub(crate) fn first_wins(stored: &CampaignUserMap, incoming: &CampaignUserMap) -> CampaignUserMap {
    let mut merged = stored.clone();
    for goal in incoming.goals() {
        merged.add_goal(goal);
    }
    merged
}

/// A new mapping's value, as VWO's Node SDK and its Redis helper write it.
pub(crate) fn encode_new(map: &CampaignUserMap) -> String {
    let mut out = String::with_capacity(
        64 + map.user_id.len()
            + map.variation_name.len()
            + map.campaign_key.len()
            + map.goal_identifier.as_ref().map_or(0, String::len),
    );
    out.push_str("{\"userId\":");
    push_json_string(&mut out, &map.user_id);
    out.push_str(",\"variationName\":");
    push_json_string(&mut out, &map.variation_name);
    out.push_str(",\"campaignKey\":");
    push_json_string(&mut out, &map.campaign_key);
    if let Some(goals) = &map.goal_identifier {
        out.push_str(",\"goalIdentifier\":");
        push_json_string(&mut out, goals);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal: escapes as `JSON.stringify` does (quote, backslash, control characters;
/// nothing else), which is also what serde_json writes.
fn push_json_string(out: &mut String, s: &str) {
    // serde_json cannot fail on a &str; the fallback is never taken.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Reads the value stored under `key` as the mapping of (`user_id`, `campaign_key`).
///
/// Fails with [`BackendErrorKind::InvalidData`] naming the key when the bytes are not a user storage record in
/// JSON, or when they are the record of another user or campaign: ids that contain `:` can share a key in the
/// `campaignKey:userId` layout, and one must not be read, or merged, as the other.
pub(crate) fn decode(
    key: &str,
    bytes: &[u8],
    user_id: &str,
    campaign_key: &str,
) -> Result<CampaignUserMap> {
    let map = decode_any(key, bytes)?;
    if map.user_id != user_id || map.campaign_key != campaign_key {
        return Err(invalid(
            key,
            format!(
                "the value is the mapping of user {:?} in campaign {:?}, not of user {:?} in campaign {:?} (ids \
                 containing ':' share keys in the campaignKey:userId layout)",
                map.user_id, map.campaign_key, user_id, campaign_key
            ),
        ));
    }
    Ok(map)
}

/// Reads the value stored under `key` as whatever mapping it holds.
pub(crate) fn decode_any(key: &str, bytes: &[u8]) -> Result<CampaignUserMap> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| invalid(key, format!("the value is not UTF-8 text: {e}")))?;
    serde_json::from_str::<CampaignUserMap>(text).map_err(|e| {
        invalid(
            key,
            format!(
                "the value is not a user storage record in JSON ({e}); it starts with {:?}",
                preview(text)
            ),
        )
    })
}

/// Reads the value stored under `key` as the FME record of (`feature_key`, `user_id`).
///
/// Fails with [`BackendErrorKind::InvalidData`] naming the key when the bytes are not an FME record in JSON, or
/// when they are the record of another feature flag or user: ids that contain `:` can share a key in the
/// `featureKey:userId` layout.
pub(crate) fn decode_feature(
    key: &str,
    bytes: &[u8],
    feature_key: &str,
    user_id: &str,
) -> Result<FeatureRecord> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| invalid(key, format!("the value is not UTF-8 text: {e}")))?;
    let record = FeatureRecord::from_json(text).map_err(|e| {
        invalid(
            key,
            format!(
                "the value is not an FME record in JSON ({e}); it starts with {:?}",
                preview(text)
            ),
        )
    })?;
    if record.feature_key != feature_key || record.user_id != user_id {
        return Err(invalid(
            key,
            format!(
                "the value is the FME record of user {:?} for feature {:?}, not of user {:?} for feature {:?} \
                 (ids containing ':' share keys in the featureKey:userId layout)",
                record.user_id, record.feature_key, user_id, feature_key
            ),
        ));
    }
    Ok(record)
}

/// The value to store when `stored_bytes` (which decode to a mapping) must now hold `merged`: the goal list is
/// replaced wherever it is, under whichever name it was written, and added as `goalIdentifier` at the end when
/// there was none. Everything else stays byte for byte.
pub(crate) fn rewrite(key: &str, stored_bytes: &[u8], merged: &CampaignUserMap) -> Result<String> {
    let text = std::str::from_utf8(stored_bytes)
        .map_err(|e| invalid(key, format!("the value is not UTF-8 text: {e}")))?;
    let fields = serde_json::from_str::<Fields>(text)
        .map_err(|e| invalid(key, format!("the value is not a JSON object: {e}")))?;
    let goals = merged.goal_identifier.as_deref();
    let mut out = String::with_capacity(text.len() + 64);
    out.push('{');
    let mut wrote_goals = false;
    for (name, raw) in &fields.0 {
        if !out.ends_with('{') {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        if SdkField::from_key(name) == Some(SdkField::GoalIdentifier) {
            wrote_goals = true;
            push_goals(
                &mut out,
                goals,
                raw.get().trim_start().starts_with('['),
                merged,
            );
        } else {
            out.push_str(raw.get());
        }
    }
    if !wrote_goals && goals.is_some() {
        if !out.ends_with('{') {
            out.push(',');
        }
        out.push_str("\"goalIdentifier\":");
        push_goals(&mut out, goals, false, merged);
    }
    out.push('}');
    Ok(out)
}

/// Writes a goal list as the stored value had it: an array of names if it was one, else the `_vwo_` string.
fn push_goals(out: &mut String, goals: Option<&str>, as_array: bool, merged: &CampaignUserMap) {
    match goals {
        None => out.push_str("null"),
        Some(_) if as_array => {
            out.push('[');
            for (i, goal) in merged.goals().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, goal);
            }
            out.push(']');
        }
        Some(g) => push_json_string(out, g),
    }
}

/// The first characters of a bad value, for its error message.
fn preview(text: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

fn invalid(key: &str, reason: String) -> Error {
    Error::backend(BACKEND, BackendErrorKind::InvalidData, key, reason)
}

/// A JSON object's fields in their order, each value as its raw text.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Fields, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(goals: Option<&str>) -> CampaignUserMap {
        CampaignUserMap {
            goal_identifier: goals.map(str::to_owned),
            ..CampaignUserMap::new("u1", "camp", "Control")
        }
    }

    #[test]
    fn new_values_are_what_the_node_helper_writes() {
        assert_eq!(
            encode_new(&map(None)),
            r#"{"userId":"u1","variationName":"Control","campaignKey":"camp"}"#
        );
        let odd = CampaignUserMap::new("a\"b\\c\n\u{1}é/", "c", "v");
        assert_eq!(
            encode_new(&odd),
            "{\"userId\":\"a\\\"b\\\\c\\n\\u0001é/\",\"variationName\":\"v\",\"campaignKey\":\"c\"}"
        );
    }

    #[test]
    fn first_wins_keeps_the_variation_and_unites_goals() {
        let stored = map(Some("_vwo_a_vwo_b"));
        let incoming = CampaignUserMap {
            variation_name: "Variation-1".into(),
            ..map(Some("b_vwo_c"))
        };
        let merged = first_wins(&stored, &incoming);
        assert_eq!(merged.variation_name, "Control");
        assert_eq!(
            merged.goal_identifier.as_deref(),
            Some("_vwo_a_vwo_b_vwo_c")
        );
        assert_eq!(first_wins(&stored, &map(Some("a"))), stored);
        assert_eq!(first_wins(&map(None), &map(None)), map(None));
    }

    #[test]
    fn rewrites_keep_every_other_field_byte_for_byte() {
        let stored = br#"{"userId": "u1", "campaignKey": "camp", "variationName": "Control", "metaData": {"n": 12345678901234567890, "f": 1.10}, "future": [1,2]}"#;
        let merged = map(Some("g1"));
        assert_eq!(
            rewrite("k", stored, &merged).expect("rewrites"),
            r#"{"userId":"u1","campaignKey":"camp","variationName":"Control","metaData":{"n": 12345678901234567890, "f": 1.10},"future":[1,2],"goalIdentifier":"g1"}"#
        );
        let python = br#"{"userId":"u1","campaignKey":"camp","variationName":"Control","goalIdentifiers":["a"]}"#;
        assert_eq!(
            rewrite("k", python, &map(Some("a_vwo_b"))).expect("rewrites"),
            r#"{"userId":"u1","campaignKey":"camp","variationName":"Control","goalIdentifiers":["a","b"]}"#
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = decode("camp:u1", b"not json", "u1", "camp").expect_err("refused");
        assert_eq!(e.backend_kind(), Some(BackendErrorKind::InvalidData));
        assert!(e.to_string().contains("camp:u1"), "{e}");
        let other = encode_new(&CampaignUserMap::new("b:c", "a", "v"));
        let e = decode("a:b:c", other.as_bytes(), "c", "a:b").expect_err("another mapping");
        assert!(e.to_string().contains("share keys"), "{e}");
    }
}
