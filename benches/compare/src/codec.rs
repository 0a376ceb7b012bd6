//! The one key and value encoding every peer uses.
//!
//! Key: `u16 BE len(user_id) ‖ user_id ‖ campaign_key`. The length prefix (rather than a
//! separator byte) keeps keys unambiguous for any UTF-8 id and makes "all campaigns of a user"
//! one prefix scan in an ordered store.
//!
//! Value: `tag ‖ u16 BE len(variation) ‖ variation ‖ goal`, tag 1 when a goal is present. The
//! ids are not repeated in the value: the peers get the leaner record, so any advantage ussdb
//! shows is not an artefact of making them store more.

use crate::{CampaignUserMap, Res};
use std::cell::RefCell;

pub fn encode_key_into(buf: &mut Vec<u8>, user_id: &str, campaign_key: &str) {
    buf.clear();
    buf.extend_from_slice(&user_len(user_id).to_be_bytes());
    buf.extend_from_slice(user_id.as_bytes());
    buf.extend_from_slice(campaign_key.as_bytes());
}

pub fn encode_key(user_id: &str, campaign_key: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + user_id.len() + campaign_key.len());
    encode_key_into(&mut buf, user_id, campaign_key);
    buf
}

pub fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + user_id.len());
    buf.extend_from_slice(&user_len(user_id).to_be_bytes());
    buf.extend_from_slice(user_id.as_bytes());
    buf
}

fn user_len(user_id: &str) -> u16 {
    // ussdb caps ids at 1024 bytes; the workload never comes near u16::MAX.
    u16::try_from(user_id.len()).expect("user id longer than 65535 bytes")
}

thread_local! {
    static KEY_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

/// Runs `f` on the encoded key without allocating, for lookups that only borrow the key.
pub fn with_key<R>(user_id: &str, campaign_key: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    KEY_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        encode_key_into(&mut buf, user_id, campaign_key);
        f(&buf)
    })
}

pub fn encode_value(map: &CampaignUserMap) -> Vec<u8> {
    let variation = map.variation_name.as_bytes();
    let goal = map.goal_identifier.as_deref().unwrap_or("").as_bytes();
    let mut buf = Vec::with_capacity(3 + variation.len() + goal.len());
    buf.push(u8::from(map.goal_identifier.is_some()));
    let len = u16::try_from(variation.len()).expect("variation name longer than 65535 bytes");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(variation);
    buf.extend_from_slice(goal);
    buf
}

pub fn decode_value(user_id: &str, campaign_key: &str, value: &[u8]) -> Res<CampaignUserMap> {
    if value.len() < 3 {
        return Err("value too short".into());
    }
    let has_goal = value[0] == 1;
    let len = usize::from(u16::from_be_bytes([value[1], value[2]]));
    let rest = &value[3..];
    if rest.len() < len {
        return Err("variation length past the end".into());
    }
    let (variation, goal) = rest.split_at(len);
    Ok(CampaignUserMap {
        user_id: user_id.to_owned(),
        campaign_key: campaign_key.to_owned(),
        variation_name: std::str::from_utf8(variation)?.to_owned(),
        goal_identifier: if has_goal {
            Some(std::str::from_utf8(goal)?.to_owned())
        } else {
            None
        },
    })
}

/// Decodes one entry of a prefix scan over `user_prefix(user_id)`.
pub fn decode_entry(user_id: &str, key: &[u8], value: &[u8]) -> Res<CampaignUserMap> {
    let campaign = key
        .get(2 + user_id.len()..)
        .ok_or("key shorter than its user prefix")?;
    decode_value(user_id, std::str::from_utf8(campaign)?, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_with_and_without_goal() {
        for goal in [None, Some(String::new()), Some("a_vwo_b".to_owned())] {
            let map = CampaignUserMap {
                user_id: "u".into(),
                campaign_key: "c".into(),
                variation_name: "Control".into(),
                goal_identifier: goal,
            };
            let back = decode_value("u", "c", &encode_value(&map)).unwrap();
            assert_eq!(back, map);
        }
    }

    #[test]
    fn user_prefix_does_not_match_a_longer_user() {
        let key = encode_key("ab", "c");
        assert!(key.starts_with(&user_prefix("ab")));
        assert!(!key.starts_with(&user_prefix("a")));
        assert_eq!(
            decode_entry("ab", &key, &[0, 0, 1, b'v'])
                .unwrap()
                .campaign_key,
            "c"
        );
    }
}
