//! Keys and values of the user storage, as bytes. The only module that uses bincode.
//!
//! Key: `user_id length (u16 LE) | user_id | campaign_key`. The length prefix keeps `("ab", "c")` and
//! `("a", "bc")` apart and lets a record be attributed to its user without decoding the value.
//!
//! Value: bincode 2 (standard configuration: variable-length integers, little-endian) of [`StoredValue`]. The
//! user id and campaign key are not repeated in the value; they are in the key. The encoding is frozen by the
//! golden vectors in the tests below: a change to them is a change of the on-disk format.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use crate::model::CampaignUserMap;
use crate::record::MAX_RECORD_VALUE_LEN;
use crate::{Error, Result};

/// Longest user id or campaign key, in bytes of UTF-8.
pub const MAX_ID_LEN: usize = 1024;
/// Largest encoded value, in bytes.
pub const MAX_VALUE_LEN: usize = MAX_RECORD_VALUE_LEN;

/// What a record's value holds. Field order is the on-disk order; never reorder, never add serde attributes that
/// skip fields (bincode is not self-describing, so a skipped field shifts every byte after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredValue<'a> {
    /// The variation the user was assigned.
    #[serde(borrow)]
    pub variation_name: Cow<'a, str>,
    /// Goals already tracked, joined by `_vwo_`, byte for byte as the SDK gave them.
    #[serde(borrow)]
    pub goal_identifier: Option<Cow<'a, str>>,
    /// Extra data some SDKs attach (`metaData`), kept as JSON text so nothing is lost.
    #[serde(borrow)]
    pub meta_data: Option<Cow<'a, str>>,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_VALUE_LEN }>()
}

/// Checks one id against the limits.
pub(crate) fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid_key(field, id, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid_key(
            field,
            id,
            format!("is {} bytes long, the limit is {MAX_ID_LEN}", id.len()),
        ));
    }
    Ok(())
}

/// Refuses an empty variation name, as empty ids are refused: the SDKs never store one, so it can only come from
/// a mistake (a missing field read as `""`), and a user mapped to no variation would stay stuck there.
pub(crate) fn check_variation(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_key(
            "variation_name",
            name,
            "must not be empty",
        ));
    }
    Ok(())
}

/// Encodes the key of a mapping after checking both ids.
pub(crate) fn encode_key(user_id: &str, campaign_key: &str) -> Result<Vec<u8>> {
    check_id("user_id", user_id)?;
    check_id("campaign_key", campaign_key)?;
    encode_item_key(user_id, campaign_key.as_bytes())
}

/// Encodes the key of any item of a user (a campaign key's bytes for a mapping) after checking the user id. The
/// caller has checked the item: non-empty, and short enough that the key fits [`crate::record::MAX_KEY_LEN`].
pub(crate) fn encode_item_key(user_id: &str, item: &[u8]) -> Result<Vec<u8>> {
    check_id("user_id", user_id)?;
    let mut key = Vec::with_capacity(2 + user_id.len() + item.len());
    key.extend_from_slice(&(user_id.len() as u16).to_le_bytes());
    key.extend_from_slice(user_id.as_bytes());
    key.extend_from_slice(item);
    Ok(key)
}

/// Splits an encoded key into user id and campaign key bytes, or `None` if it is malformed.
pub(crate) fn split_key(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let user_len = u16::from_le_bytes(*len) as usize;
    let (user, campaign) = rest.split_at_checked(user_len)?;
    if user.is_empty() || campaign.is_empty() {
        return None;
    }
    Some((user, campaign))
}

/// Decodes an encoded key into its two ids.
pub(crate) fn decode_key(key: &[u8]) -> Option<(&str, &str)> {
    let (user, campaign) = split_key(key)?;
    Some((
        std::str::from_utf8(user).ok()?,
        std::str::from_utf8(campaign).ok()?,
    ))
}

/// True when `key` is the key of (`user_id`, `item`); allocation-free, for the read path.
pub(crate) fn key_matches(key: &[u8], user_id: &str, item: &[u8]) -> bool {
    split_key(key).is_some_and(|(u, c)| u == user_id.as_bytes() && c == item)
}

/// Encodes the value of a mapping.
pub(crate) fn encode_value(map: &CampaignUserMap, meta_data: Option<&str>) -> Result<Vec<u8>> {
    let stored = StoredValue {
        variation_name: Cow::Borrowed(&map.variation_name),
        goal_identifier: map.goal_identifier.as_deref().map(Cow::Borrowed),
        meta_data: meta_data.map(Cow::Borrowed),
    };
    let too_large = |len: usize| Error::ValueTooLarge {
        user_id: map.user_id.clone(),
        campaign_key: map.campaign_key.clone(),
        len,
        max: MAX_VALUE_LEN,
    };
    // The encoding is a few bytes longer than the strings; refuse hopeless values before copying them.
    let raw = map.variation_name.len()
        + map.goal_identifier.as_ref().map_or(0, String::len)
        + meta_data.map_or(0, str::len);
    if raw > MAX_VALUE_LEN {
        return Err(too_large(raw));
    }
    // Sized up front: the encoding is the strings plus at most 21 bytes of lengths and tags, and growing a
    // Vec from empty costs more than the encoding itself.
    let mut bytes = Vec::with_capacity(raw + 32);
    bincode::serde::encode_into_std_write(&stored, &mut bytes, config())
        .map_err(|_| too_large(raw))?;
    if bytes.len() > MAX_VALUE_LEN {
        return Err(too_large(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a value; the error text says what is wrong (the caller adds file and offset).
pub(crate) fn decode_value(bytes: &[u8]) -> std::result::Result<StoredValue<'_>, String> {
    let (value, used): (StoredValue<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        ));
    }
    Ok(value)
}

/// Builds the public map from a record's key and value.
pub(crate) fn decode_map(
    key: &[u8],
    value: &[u8],
) -> std::result::Result<(CampaignUserMap, Option<String>), String> {
    let (user_id, campaign_key) = decode_key(key).ok_or("malformed key")?;
    decode_map_of(user_id, campaign_key, value)
}

/// Builds the public map from a record's value, for a key already known to be (`user_id`, `campaign_key`):
/// the read path has just compared the record's key with the caller's ids, so it need not decode it again.
pub(crate) fn decode_map_of(
    user_id: &str,
    campaign_key: &str,
    value: &[u8],
) -> std::result::Result<(CampaignUserMap, Option<String>), String> {
    let stored = decode_value(value)?;
    let map = CampaignUserMap {
        user_id: user_id.to_owned(),
        campaign_key: campaign_key.to_owned(),
        variation_name: stored.variation_name.into_owned(),
        goal_identifier: stored.goal_identifier.map(Cow::into_owned),
    };
    Ok((map, stored.meta_data.map(Cow::into_owned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(goal: Option<&str>) -> CampaignUserMap {
        CampaignUserMap {
            user_id: "u1".into(),
            campaign_key: "camp".into(),
            variation_name: "Control".into(),
            goal_identifier: goal.map(str::to_owned),
        }
    }

    #[test]
    fn golden_key_bytes() {
        assert_eq!(encode_key("u1", "camp").expect("valid"), b"\x02\x00u1camp");
        assert!(key_matches(b"\x02\x00u1camp", "u1", b"camp"));
        assert!(!key_matches(b"\x02\x00u1camp", "u", b"1camp"));
        assert_eq!(decode_key(b"\x02\x00u1camp"), Some(("u1", "camp")));
        assert_eq!(split_key(b"\x05\x00u1"), None);
    }

    #[test]
    fn golden_value_bytes() {
        // Frozen on-disk bytes: a change here breaks every existing store.
        assert_eq!(
            encode_value(&map(None), None).expect("encodes"),
            b"\x07Control\x00\x00"
        );
        assert_eq!(
            encode_value(&map(Some("a_vwo_b")), Some("{\"k\":1}")).expect("encodes"),
            b"\x07Control\x01\x07a_vwo_b\x01\x07{\"k\":1}"
        );
    }

    #[test]
    fn value_round_trip_keeps_goal_strings_byte_for_byte() {
        for goal in [
            None,
            Some(""),
            Some("_vwo_buy"),
            Some("buy_vwo_"),
            Some("a_vwo_b_vwo_ü"),
        ] {
            let bytes = encode_value(&map(goal), Some("{}")).expect("encodes");
            let (back, meta) = decode_map(b"\x02\x00u1camp", &bytes).expect("decodes");
            assert_eq!(back, map(goal));
            assert_eq!(meta.as_deref(), Some("{}"));
        }
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(decode_value(b"").is_err());
        assert!(decode_value(b"\x07Contr").is_err());
        assert!(decode_value(b"\x07Control\x00\x00\x00").is_err());
        assert!(
            decode_value(b"\x02\xff\xfe\x00\x00").is_err(),
            "invalid UTF-8"
        );
        assert!(
            decode_value(b"\xfd\xff\xff\xff\xff\xff\xff\xff\x7f").is_err(),
            "huge length"
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(encode_key("", "c").is_err());
        assert!(encode_key("u", "").is_err());
        assert!(encode_key(&"x".repeat(MAX_ID_LEN + 1), "c").is_err());
        assert!(encode_key(&"x".repeat(MAX_ID_LEN), &"y".repeat(MAX_ID_LEN)).is_ok());
    }
}
