//! Keys and values of the user storage, as bytes. The only module that uses bincode.
//!
//! Key: `user_id length (u16 LE) | user_id | campaign_key`. The length prefix keeps `("ab", "c")` and
//! `("a", "bc")` apart and lets a record be attributed to its user without decoding the value.
//!
//! Value: bincode 2 (standard configuration: variable-length integers, little-endian) of [`StoredValue`]. The
//! user id and campaign key are not repeated in the value; they are in the key. The encoding is frozen by the
//! golden vectors in the tests below: a change to them is a change of the on-disk format.
//!
//! bincode defines that format and writes it; [`decode_value`] reads it by hand, because it runs on every get and
//! bincode's decoder costs more than the reading itself. The tests and the `value_codec` fuzz target hold the hand
//! decoder to bincode's ([`decode_value_bincode`]): the same values from the same bytes, and refusal of the same.
//!
//! FME records ([`FeatureRecord`]) live in their own item namespace: their item is `0xFF` followed by the feature
//! key. `0xFF` never occurs in UTF-8, so no campaign key (always UTF-8) can equal an FME item, and a record's kind
//! is told from its key alone. Their value is a version byte (`1`) and bincode of [`StoredFeature`].

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use crate::model::{CampaignUserMap, FeatureRecord, Field, FmeId, IdParts};
use crate::record::MAX_RECORD_VALUE_LEN;
use crate::{Error, Result};

pub use crate::model::MAX_ID_LEN;
pub(crate) use crate::model::check_id;
/// Largest encoded value, in bytes.
pub const MAX_VALUE_LEN: usize = MAX_RECORD_VALUE_LEN;

/// What a record's value holds. Field order is the on-disk order; never reorder, never add serde attributes that
/// skip fields (bincode is not self-describing, so a skipped field shifts every byte after it). Written through
/// serde, read by [`decode_value`], and by the `BorrowDecode` below that it is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StoredValue<'a> {
    /// The variation the user was assigned.
    pub variation_name: Cow<'a, str>,
    /// Goals already tracked, joined by `_vwo_`, byte for byte as the SDK gave them.
    pub goal_identifier: Option<Cow<'a, str>>,
    /// Extra data some SDKs attach (`metaData`), kept as JSON text so nothing is lost.
    pub meta_data: Option<Cow<'a, str>>,
}

/// bincode's reading of the value, field by field: the reference [`decode_value`] is held to (tests and fuzzing).
impl<'de, Context> bincode::BorrowDecode<'de, Context> for StoredValue<'de> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> std::result::Result<Self, bincode::error::DecodeError> {
        Ok(StoredValue {
            variation_name: Cow::Borrowed(<&'de str>::borrow_decode(decoder)?),
            goal_identifier: <Option<&'de str>>::borrow_decode(decoder)?.map(Cow::Borrowed),
            meta_data: <Option<&'de str>>::borrow_decode(decoder)?.map(Cow::Borrowed),
        })
    }
}

/// bincode's limit when reading a value. It does not count bytes read but what the decoder claims: 8 per length
/// whatever its width, a whole container before its elements. A limit of [`MAX_VALUE_LEN`] therefore refused some
/// values that the writer accepts (a variation name 9 bytes short of 1 MiB was written and then unreadable), so
/// the readers' limit is far above any count that a value of at most [`MAX_VALUE_LEN`] bytes can make; all it
/// must do is stop a damaged length from making the decoder allocate without bound. (The tests write values of
/// the largest size, of either kind, and read them back.)
const DECODE_LIMIT: usize = 32 * MAX_VALUE_LEN;

/// bincode's configuration: the standard one, with [`DECODE_LIMIT`] (writes are checked against
/// [`MAX_VALUE_LEN`] on their length; the limit applies to reading only).
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ DECODE_LIMIT }>()
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

/// The first byte of every FME item: a byte that never occurs in UTF-8, so FME items and campaign keys are apart.
pub(crate) const FEATURE_ITEM_TAG: u8 = 0xFF;

/// The item under which the FME record of `feature_key` is stored.
pub(crate) fn feature_item(feature_key: &str) -> Vec<u8> {
    let mut item = Vec::with_capacity(1 + feature_key.len());
    item.push(FEATURE_ITEM_TAG);
    item.extend_from_slice(feature_key.as_bytes());
    item
}

/// What an item of a user is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// A campaign mapping's campaign key.
    Campaign(&'a str),
    /// An FME record's feature key.
    Feature(&'a str),
    /// Neither: an FME tag before bytes that are not UTF-8, or bytes that are not UTF-8 at all.
    Unknown,
}

/// Tells a campaign key from an FME item by its first byte.
pub(crate) fn classify_item(item: &[u8]) -> Item<'_> {
    match item.split_first() {
        Some((&FEATURE_ITEM_TAG, key)) => match std::str::from_utf8(key) {
            Ok(key) if !key.is_empty() => Item::Feature(key),
            _ => Item::Unknown,
        },
        _ => std::str::from_utf8(item).map_or(Item::Unknown, Item::Campaign),
    }
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

/// The error for a value of `len` bytes, naming its mapping.
fn value_too_large(map: &CampaignUserMap, len: usize) -> Error {
    Error::ValueTooLarge {
        user_id: map.user_id.clone(),
        campaign_key: map.campaign_key.clone(),
        len,
        max: MAX_VALUE_LEN,
    }
}

/// The bytes of a value's strings, refused when hopeless: the encoding is a few bytes longer than the strings,
/// so a value whose strings alone pass the limit is refused before it is copied.
fn raw_value_len(map: &CampaignUserMap, meta_data: Option<&str>) -> Result<usize> {
    let raw = map.variation_name.len()
        + map.goal_identifier.as_ref().map_or(0, String::len)
        + meta_data.map_or(0, str::len);
    if raw > MAX_VALUE_LEN {
        return Err(value_too_large(map, raw));
    }
    Ok(raw)
}

/// Encodes the value of a mapping.
pub(crate) fn encode_value(map: &CampaignUserMap, meta_data: Option<&str>) -> Result<Vec<u8>> {
    let stored = StoredValue {
        variation_name: Cow::Borrowed(&map.variation_name),
        goal_identifier: map.goal_identifier.as_deref().map(Cow::Borrowed),
        meta_data: meta_data.map(Cow::Borrowed),
    };
    let too_large = |len: usize| value_too_large(map, len);
    let raw = raw_value_len(map, meta_data)?;
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

/// Appends the value of a mapping to `out`, a record being built in place (see `Engine::put_with`): the same
/// bytes as [`encode_value`], with no buffer of their own. On failure `out` is as it was.
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "only the tiers (feature `redis`) use it")
)]
pub(crate) fn encode_value_into(
    map: &CampaignUserMap,
    meta_data: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let too_large = |len: usize| value_too_large(map, len);
    let raw = raw_value_len(map, meta_data)?;
    let start = out.len();
    let stored = StoredValue {
        variation_name: Cow::Borrowed(&map.variation_name),
        goal_identifier: map.goal_identifier.as_deref().map(Cow::Borrowed),
        meta_data: meta_data.map(Cow::Borrowed),
    };
    let encoded = bincode::serde::encode_into_writer(&stored, Tail(out), config());
    let len = out.len() - start;
    if encoded.is_err() || len > MAX_VALUE_LEN {
        out.truncate(start);
        return Err(too_large(len.max(raw)));
    }
    Ok(())
}

/// Appends what bincode writes to a buffer. (A writer of its own, not `std::io::Write`: bincode's encoding is
/// generic over the writer, and sharing `encode_value`'s would change how that one is compiled.)
struct Tail<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Tail<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes a value; the error text says what is wrong (the caller adds file and offset). Accepts exactly the bytes
/// bincode's decoder accepts ([`decode_value_bincode`]), including its non-minimal lengths (`fb 05 00` for 5),
/// and applies its limit the way it does.
pub(crate) fn decode_value(bytes: &[u8]) -> std::result::Result<StoredValue<'_>, String> {
    read_value(bytes).map_err(|damage| damage.to_string())
}

/// bincode's own decoding of a value: the definition [`decode_value`] is tested and fuzzed against.
pub(crate) fn decode_value_bincode(bytes: &[u8]) -> std::result::Result<StoredValue<'_>, String> {
    let (value, used): (StoredValue<'_>, usize) =
        bincode::borrow_decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        ));
    }
    Ok(value)
}

/// The fields of a value, in their order, to name the one that is damaged.
#[derive(Clone, Copy, Debug)]
enum ValueField {
    VariationName,
    GoalIdentifier,
    MetaData,
}

impl std::fmt::Display for ValueField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValueField::VariationName => "variation name",
            ValueField::GoalIdentifier => "goal identifier",
            ValueField::MetaData => "meta data",
        })
    }
}

/// What is wrong with a value: small and plain, so the read path returns it cheaply, and put into words only
/// when a value is damaged.
#[derive(Debug)]
enum ValueDamage {
    EndsInLength(ValueField),
    /// A length's first byte is `fe` (a u128, which no length is) or `ff` (reserved).
    LengthTag(ValueField, u8),
    Short {
        field: ValueField,
        len: u64,
        left: usize,
    },
    NotUtf8(ValueField, std::str::Utf8Error),
    EndsBeforeTag(ValueField),
    OptionTag(ValueField, u8),
    Trailing(usize),
    /// bincode's count against its limit (see [`read_value`]).
    OverLimit(usize),
}

impl std::fmt::Display for ValueDamage {
    #[cold]
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueDamage::EndsInLength(field) => write!(f, "value ends inside the {field}'s length"),
            ValueDamage::LengthTag(field, byte) => write!(
                f,
                "the {field}'s length starts with byte {byte}, which starts no length (251 to 253 do)"
            ),
            ValueDamage::Short { field, len, left } => write!(
                f,
                "the {field}'s length is {len} bytes, the value has {left} left"
            ),
            ValueDamage::NotUtf8(field, e) => write!(f, "the {field} is not UTF-8: {e}"),
            ValueDamage::EndsBeforeTag(field) => {
                write!(f, "value ends before the {field}'s option tag")
            }
            ValueDamage::OptionTag(field, tag) => {
                write!(f, "option tag {tag} before the {field} (0 or 1)")
            }
            ValueDamage::Trailing(n) => write!(f, "{n} trailing bytes after the value"),
            ValueDamage::OverLimit(claimed) => write!(
                f,
                "value counts {claimed} bytes by bincode's measure, past its limit of {DECODE_LIMIT}"
            ),
        }
    }
}

/// Reads bincode's encoding of [`StoredValue`] as bincode 2.0.1 reads it (standard configuration, limit
/// [`DECODE_LIMIT`]).
fn read_value(bytes: &[u8]) -> std::result::Result<StoredValue<'_>, ValueDamage> {
    let mut rest = bytes;
    let variation_name = read_str(&mut rest, ValueField::VariationName)?;
    let goal_identifier = read_option(&mut rest, ValueField::GoalIdentifier)?;
    let meta_data = read_option(&mut rest, ValueField::MetaData)?;
    if !rest.is_empty() {
        return Err(ValueDamage::Trailing(rest.len()));
    }
    // bincode's limit counts 8 bytes per length (the u64 it decodes, whatever the varint's width), 1 per option
    // tag and each string's bytes, and refuses a value once the count passes the limit. The count only grows,
    // so checking its total once, here, refuses the same values. (The strings lie within `bytes`: no overflow.)
    let lengths = 1 + usize::from(goal_identifier.is_some()) + usize::from(meta_data.is_some());
    let claimed = 8 * lengths
        + 2
        + variation_name.len()
        + goal_identifier.map_or(0, str::len)
        + meta_data.map_or(0, str::len);
    if claimed > DECODE_LIMIT {
        return Err(ValueDamage::OverLimit(claimed));
    }
    Ok(StoredValue {
        variation_name: Cow::Borrowed(variation_name),
        goal_identifier: goal_identifier.map(Cow::Borrowed),
        meta_data: meta_data.map(Cow::Borrowed),
    })
}

/// A varint length: a byte below 251 is the length; `fb`, `fc`, `fd` are followed by a u16, u32, u64
/// (little-endian), which bincode reads even when a shorter form would do; `fe` (u128) and `ff` are refused.
#[inline]
fn read_len(rest: &mut &[u8], field: ValueField) -> std::result::Result<u64, ValueDamage> {
    let ends = ValueDamage::EndsInLength(field);
    let (&first, after) = rest.split_first().ok_or(ValueDamage::EndsInLength(field))?;
    let (len, after) = match first {
        0..=250 => (u64::from(first), after),
        251 => {
            let (b, after) = after.split_first_chunk::<2>().ok_or(ends)?;
            (u64::from(u16::from_le_bytes(*b)), after)
        }
        252 => {
            let (b, after) = after.split_first_chunk::<4>().ok_or(ends)?;
            (u64::from(u32::from_le_bytes(*b)), after)
        }
        253 => {
            let (b, after) = after.split_first_chunk::<8>().ok_or(ends)?;
            (u64::from_le_bytes(*b), after)
        }
        _ => return Err(ValueDamage::LengthTag(field, first)),
    };
    *rest = after;
    Ok(len)
}

/// A string: its varint length, then that many bytes of UTF-8.
#[inline(always)]
fn read_str<'a>(
    rest: &mut &'a [u8],
    field: ValueField,
) -> std::result::Result<&'a str, ValueDamage> {
    let len = read_len(rest, field)?;
    // A length past the address space is past the bytes too.
    let (bytes, after) = usize::try_from(len)
        .ok()
        .and_then(|n| rest.split_at_checked(n))
        .ok_or(ValueDamage::Short {
            field,
            len,
            left: rest.len(),
        })?;
    *rest = after;
    std::str::from_utf8(bytes).map_err(|e| ValueDamage::NotUtf8(field, e))
}

/// An option: tag `00` for none, `01` and the string for some; any other tag is refused.
#[inline(always)]
fn read_option<'a>(
    rest: &mut &'a [u8],
    field: ValueField,
) -> std::result::Result<Option<&'a str>, ValueDamage> {
    let (&tag, after) = rest
        .split_first()
        .ok_or(ValueDamage::EndsBeforeTag(field))?;
    *rest = after;
    match tag {
        0 => Ok(None),
        1 => read_str(rest, field).map(Some),
        _ => Err(ValueDamage::OptionTag(field, tag)),
    }
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

/// The version byte that starts every FME value, so the format can grow without guessing.
const FEATURE_VALUE_VERSION: u8 = 1;

/// A member of an FME record: absent, `null`, or a value. Variant order is the on-disk tag (0, 1, 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StoredField<T> {
    Absent,
    Null,
    Value(T),
}

/// An id: variant order is the on-disk tag (0 integer as zigzag varint, 1 other number literal, 2 string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum StoredId {
    Int(i64),
    Number(String),
    Text(String),
}

/// What an FME record's value holds after the version byte. Field order is the on-disk order; never reorder.
/// Feature key and user id are in the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredFeature {
    feature_id: StoredField<StoredId>,
    rollout_id: StoredField<StoredId>,
    rollout_key: StoredField<String>,
    rollout_variation_id: StoredField<StoredId>,
    experiment_id: StoredField<StoredId>,
    experiment_key: StoredField<String>,
    experiment_variation_id: StoredField<StoredId>,
    is_in_holdout_id: StoredField<Vec<StoredId>>,
    not_in_holdout_id: StoredField<Vec<StoredId>>,
    /// The members no typed field holds, as one JSON object's text.
    other_fields: Option<String>,
}

fn stored_field<T, S>(field: &Field<T>, f: impl FnOnce(&T) -> S) -> StoredField<S> {
    match field {
        Field::Absent => StoredField::Absent,
        Field::Null => StoredField::Null,
        Field::Value(v) => StoredField::Value(f(v)),
    }
}

fn stored_id(id: &FmeId) -> StoredId {
    match id.parts() {
        IdParts::Int(n) => StoredId::Int(n),
        IdParts::Number(s) => StoredId::Number(s.to_owned()),
        IdParts::Text(s) => StoredId::Text(s.to_owned()),
    }
}

fn field_of<S, T>(
    stored: StoredField<S>,
    f: impl FnOnce(S) -> std::result::Result<T, String>,
) -> std::result::Result<Field<T>, String> {
    Ok(match stored {
        StoredField::Absent => Field::Absent,
        StoredField::Null => Field::Null,
        StoredField::Value(v) => Field::Value(f(v)?),
    })
}

fn id_of(stored: StoredId) -> std::result::Result<FmeId, String> {
    let parts = match &stored {
        StoredId::Int(n) => IdParts::Int(*n),
        StoredId::Number(s) => IdParts::Number(s),
        StoredId::Text(s) => IdParts::Text(s),
    };
    FmeId::from_parts(parts)
        .ok_or_else(|| format!("stored id {stored:?} is not in its one encoding"))
}

fn ids_of(stored: Vec<StoredId>) -> std::result::Result<Vec<FmeId>, String> {
    stored.into_iter().map(id_of).collect()
}

/// Encodes the value of an FME record (the caller has checked its ids).
pub(crate) fn encode_feature(rec: &FeatureRecord) -> Result<Vec<u8>> {
    let ids = |v: &Vec<FmeId>| v.iter().map(stored_id).collect::<Vec<_>>();
    let stored = StoredFeature {
        feature_id: stored_field(&rec.feature_id, stored_id),
        rollout_id: stored_field(&rec.rollout_id, stored_id),
        rollout_key: stored_field(&rec.rollout_key, String::clone),
        rollout_variation_id: stored_field(&rec.rollout_variation_id, stored_id),
        experiment_id: stored_field(&rec.experiment_id, stored_id),
        experiment_key: stored_field(&rec.experiment_key, String::clone),
        experiment_variation_id: stored_field(&rec.experiment_variation_id, stored_id),
        is_in_holdout_id: stored_field(&rec.is_in_holdout_id, ids),
        not_in_holdout_id: stored_field(&rec.not_in_holdout_id, ids),
        other_fields: rec.other_fields().map(str::to_owned),
    };
    let too_large = |len: usize| Error::ValueTooLarge {
        user_id: rec.user_id.clone(),
        campaign_key: rec.feature_key.clone(),
        len,
        max: MAX_VALUE_LEN,
    };
    let mut bytes = vec![FEATURE_VALUE_VERSION];
    bincode::serde::encode_into_std_write(&stored, &mut bytes, config())
        .map_err(|_| too_large(rec.to_json().len()))?;
    if bytes.len() > MAX_VALUE_LEN {
        return Err(too_large(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes an FME record's value into the record of (`user_id`, `feature_key`); the error says what is wrong.
pub(crate) fn decode_feature(
    user_id: &str,
    feature_key: &str,
    value: &[u8],
) -> std::result::Result<FeatureRecord, String> {
    let Some((&version, rest)) = value.split_first() else {
        return Err("empty FME value".into());
    };
    if version != FEATURE_VALUE_VERSION {
        return Err(format!(
            "FME value version {version}, this build reads version {FEATURE_VALUE_VERSION}"
        ));
    }
    let (stored, used): (StoredFeature, usize) =
        bincode::serde::decode_from_slice(rest, config()).map_err(|e| e.to_string())?;
    if used != rest.len() {
        return Err(format!(
            "{} trailing bytes after the FME value",
            rest.len() - used
        ));
    }
    let mut rec = FeatureRecord::new(feature_key, user_id);
    rec.feature_id = field_of(stored.feature_id, id_of)?;
    rec.rollout_id = field_of(stored.rollout_id, id_of)?;
    rec.rollout_key = field_of(stored.rollout_key, Ok)?;
    rec.rollout_variation_id = field_of(stored.rollout_variation_id, id_of)?;
    rec.experiment_id = field_of(stored.experiment_id, id_of)?;
    rec.experiment_key = field_of(stored.experiment_key, Ok)?;
    rec.experiment_variation_id = field_of(stored.experiment_variation_id, id_of)?;
    rec.is_in_holdout_id = field_of(stored.is_in_holdout_id, ids_of)?;
    rec.not_in_holdout_id = field_of(stored.not_in_holdout_id, ids_of)?;
    if let Some(other) = &stored.other_fields
        && !(other.starts_with('{') && other.ends_with('}') && other.len() > 2)
    {
        return Err("the other members of an FME value are not a JSON object".into());
    }
    rec.set_other_fields_unchecked(stored.other_fields.map(String::into_boxed_str));
    Ok(rec)
}

/// Decodes an FME record from a record's key and value.
pub(crate) fn decode_feature_record(
    key: &[u8],
    value: &[u8],
) -> std::result::Result<FeatureRecord, String> {
    let (user, item) = split_key(key).ok_or("malformed key")?;
    let user_id = std::str::from_utf8(user).map_err(|_| "user id is not UTF-8")?;
    match classify_item(item) {
        Item::Feature(feature_key) => decode_feature(user_id, feature_key, value),
        _ => Err("not an FME key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::same_value_decoding as agree;
    use crate::testing::Rng;

    fn map(goal: Option<&str>) -> CampaignUserMap {
        CampaignUserMap {
            user_id: "u1".into(),
            campaign_key: "camp".into(),
            variation_name: "Control".into(),
            goal_identifier: goal.map(str::to_owned),
        }
    }

    #[test]
    fn values_encoded_in_place_are_the_encoded_ones() {
        let m = CampaignUserMap {
            goal_identifier: Some("a_vwo_b".into()),
            ..CampaignUserMap::new("u", "c", "v")
        };
        let mut out = b"prefix".to_vec();
        encode_value_into(&m, Some("{\"k\":1}"), &mut out).expect("encodes");
        let alone = encode_value(&m, Some("{\"k\":1}")).expect("encodes");
        assert_eq!(out.get(6..), Some(alone.as_slice()));
        let huge = CampaignUserMap::new("u", "c", "v".repeat(MAX_VALUE_LEN + 1));
        assert!(encode_value_into(&huge, None, &mut out).is_err());
        assert_eq!(
            out.len(),
            6 + alone.len(),
            "a refused value leaves nothing behind"
        );
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
        // And read back by the decoder the read path uses (by hand, held to bincode's by the tests below).
        let read = decode_value(b"\x07Control\x01\x07a_vwo_b\x01\x07{\"k\":1}").expect("decodes");
        assert_eq!(read.variation_name, "Control");
        assert_eq!(read.goal_identifier.as_deref(), Some("a_vwo_b"));
        assert_eq!(read.meta_data.as_deref(), Some("{\"k\":1}"));
        let bare = decode_value(b"\x07Control\x00\x00").expect("decodes");
        assert_eq!((bare.goal_identifier, bare.meta_data), (None, None));
        // An option tag other than 0 or 1 is damage.
        assert!(decode_value(b"\x07Control\x02\x00").is_err());
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

    /// A string of about `chars` characters of one to four UTF-8 bytes each.
    fn text(rng: &mut Rng, chars: usize) -> String {
        const CHARS: [char; 8] = ['a', 'Z', '_', '{', '\u{0}', 'ü', '€', '😀'];
        (0..chars).map(|_| CHARS[rng.below(CHARS.len())]).collect()
    }

    /// A length that often sits at a border of the varint's forms.
    fn varint_len(rng: &mut Rng) -> usize {
        match rng.below(8) {
            0 => 0,
            1 => 245 + rng.below(12),
            _ => rng.below(20),
        }
    }

    fn random_value(rng: &mut Rng) -> StoredValue<'static> {
        let n = varint_len(rng);
        let variation_name = Cow::Owned(text(rng, n));
        let field = |rng: &mut Rng| {
            (rng.below(3) > 0).then(|| {
                let n = varint_len(rng);
                Cow::Owned(text(rng, n))
            })
        };
        StoredValue {
            variation_name,
            goal_identifier: field(rng),
            meta_data: field(rng),
        }
    }

    fn bincode_bytes(value: &StoredValue<'_>) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, config()).expect("encodes")
    }

    /// Every truncation, every single-byte change to one of a few telling bytes or a random one, and a byte too
    /// many: the two decoders agree on all of them. Returns (accepted, refused) counts.
    fn agree_around(bytes: &[u8], rng: &mut Rng) -> (usize, usize) {
        let mut counts = (0, 0);
        let mut tally = |ok: bool| {
            if ok {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        };
        tally(agree(bytes));
        for end in 0..bytes.len() {
            tally(agree(&bytes[..end]));
        }
        let mut changed = bytes.to_vec();
        for at in 0..bytes.len() {
            let was = bytes[at];
            let random = rng.next() as u8;
            for b in [
                0,
                1,
                2,
                7,
                250,
                251,
                252,
                253,
                254,
                255,
                was ^ 1,
                was ^ 0x80,
                random,
            ] {
                changed[at] = b;
                tally(agree(&changed));
            }
            changed[at] = was;
        }
        changed.push(rng.next() as u8);
        tally(agree(&changed));
        counts
    }

    #[test]
    fn hand_decoder_reads_what_bincode_reads() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let golden: [&[u8]; 2] = [
            b"\x07Control\x00\x00",
            b"\x07Control\x01\x07a_vwo_b\x01\x07{\"k\":1}",
        ];
        let mut counts = (0, 0);
        let mut add = |c: (usize, usize)| {
            counts.0 += c.0;
            counts.1 += c.1;
        };
        for bytes in golden {
            add(agree_around(bytes, &mut rng));
        }
        for _ in 0..1500 {
            let value = random_value(&mut rng);
            let bytes = bincode_bytes(&value);
            assert_eq!(decode_value(&bytes), Ok(value.clone()), "{bytes:02x?}");
            add(agree_around(&bytes, &mut rng));
        }
        // Strings with a u16 or u32 length: whole, cut just before and after the length, and with its bytes changed.
        for n in [65_535, 65_536, 70_000] {
            let value = StoredValue {
                variation_name: Cow::Owned("v".repeat(n)),
                goal_identifier: Some(Cow::Owned(text(&mut rng, n / 4))),
                meta_data: None,
            };
            let bytes = bincode_bytes(&value);
            assert!(agree(&bytes));
            for end in (0..8).chain(bytes.len() - 8..bytes.len()) {
                assert!(!agree(&bytes[..end]));
            }
            let mut changed = bytes.clone();
            for at in 0..5 {
                for b in [0, 1, 250, 251, 252, 253, 254, 255] {
                    changed[at] = b;
                    agree(&changed);
                }
                changed[at] = bytes[at];
            }
        }
        // Both outcomes are exercised at length, or the agreement above proves little.
        assert!(counts.0 > 10_000 && counts.1 > 100_000, "{counts:?}");
    }

    /// A value whose variation name has the length prefix `len` before `body`, then no goals and no metadata.
    fn named(len: &[u8], body: &[u8]) -> Vec<u8> {
        [len, body, b"\x00\x00"].concat()
    }

    #[test]
    fn hand_decoder_reads_bincodes_varints() {
        let hello = b"hello";
        let a250 = [b'a'; 250];
        // Shortest and longer forms of one length: bincode reads them all the same.
        for len in [
            &[5][..],
            &[251, 5, 0],
            &[252, 5, 0, 0, 0],
            &[253, 5, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let bytes = named(len, hello);
            assert!(agree(&bytes), "{bytes:02x?}");
            assert_eq!(
                decode_value(&bytes).expect("decodes").variation_name,
                "hello"
            );
        }
        assert!(agree(&named(&[250], &a250)));
        assert!(agree(&named(&[251, 250, 0], &a250)));
        assert!(agree(&named(&[251, 251, 0], &[b'a'; 251])));
        assert!(agree(&named(&[251, 0xff, 0xff], &[b'a'; 65_535])));
        assert!(agree(&named(&[252, 0, 0, 1, 0], &[b'a'; 65_536])));
        // Lengths that are u128 or reserved, that promise more than there is, or that pass the limit.
        for len in [
            &[254, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[255, 5],
            &[251, 6, 0],
            &[251, 0xff, 0xff],
            &[252, 0xff, 0xff, 0xff, 0xff],
            &[253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[253, 0xf7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[253, 0, 0, 0, 0, 0, 0, 0, 1],
            &[251, 5],
            &[252, 5, 0, 0],
            &[253, 5, 0, 0, 0, 0, 0, 0],
        ] {
            let bytes = named(len, hello);
            assert!(!agree(&bytes), "{bytes:02x?}");
        }
        // The same lengths in the second and third field.
        for (len, ok) in [
            (&[5][..], true),
            (&[251, 5, 0], true),
            (&[252, 5, 0, 0, 0], true),
            (&[253, 5, 0, 0, 0, 0, 0, 0, 0], true),
            (
                &[254, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                false,
            ),
            (&[255], false),
            (
                &[253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                false,
            ),
        ] {
            let goal = [b"\x01v\x01", len, hello, b"\x00"].concat();
            let meta = [b"\x01v\x00\x01", len, hello].concat();
            assert_eq!(agree(&goal), ok, "{goal:02x?}");
            assert_eq!(agree(&meta), ok, "{meta:02x?}");
        }
        // bincode's limit counts 8 bytes per length whatever its width, 1 per option tag, and the strings: a
        // value whose count is the limit is read, one more byte of string is refused, by both.
        let name_at_limit = DECODE_LIMIT - (8 + 1 + 1);
        let goal_at_limit = DECODE_LIMIT - (8 + 5 + 1 + 8 + 1);
        for extra in [0, 1] {
            let n = name_at_limit + extra;
            let len = u32::try_from(n).expect("fits").to_le_bytes();
            let bytes = named(&[&[252][..], &len].concat(), &vec![b'x'; n]);
            assert_eq!(agree(&bytes), extra == 0, "variation name of {n} bytes");
            let n = goal_at_limit + extra;
            let len = u64::try_from(n).expect("fits").to_le_bytes();
            let split = [b"\x05hello\x01\xfd", &len[..], &vec![b'x'; n], b"\x00"].concat();
            assert_eq!(agree(&split), extra == 0, "goal identifier of {n} bytes");
        }
    }

    #[test]
    fn hand_decoder_says_what_is_wrong() {
        let error = |bytes: &[u8]| decode_value(bytes).expect_err("refused");
        assert!(error(b"\x07Control\x07").contains("option tag 7"));
        assert!(
            error(b"\x07Control\x01\xfb\x01").contains("ends inside the goal identifier's length")
        );
        assert!(error(b"\x07Control\x00").contains("meta data's option tag"));
        assert!(
            error(b"\x07Control\x00\x01\xfe").contains("meta data's length starts with byte 254")
        );
        assert!(error(b"\x02\xff\xfe\x00\x00").contains("variation name is not UTF-8"));
        assert!(error(b"\x0aControl\x00\x00").contains("length is 10 bytes, the value has 9 left"));
        assert!(error(b"\xfc\x00\x00\x10\x00").contains("the value has 0 left"));
        let n = DECODE_LIMIT - 9;
        let len = u32::try_from(n).expect("fits").to_le_bytes();
        let over = named(&[&[252][..], &len].concat(), &vec![b'x'; n]);
        assert!(
            error(&over).contains("counts 33554433 bytes by bincode's measure, past its limit")
        );
        assert!(error(b"\x07Control\x00\x00\x00").contains("1 trailing bytes"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(encode_key("", "c").is_err());
        assert!(encode_key("u", "").is_err());
        assert!(encode_key(&"x".repeat(MAX_ID_LEN + 1), "c").is_err());
        assert!(encode_key(&"x".repeat(MAX_ID_LEN), &"y".repeat(MAX_ID_LEN)).is_ok());
    }

    fn feature(json_like: impl FnOnce(&mut FeatureRecord)) -> FeatureRecord {
        let mut rec = FeatureRecord::new("f", "u");
        json_like(&mut rec);
        rec
    }

    #[test]
    fn golden_feature_bytes() {
        // Frozen on-disk bytes: a change here breaks every existing store.
        assert_eq!(feature_item("f"), b"\xfff");
        assert_eq!(
            encode_feature(&FeatureRecord::new("f", "u")).expect("encodes"),
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        );
        let rollout = feature(|r| {
            r.rollout_id = FmeId::from(31).into();
            r.rollout_key = "f_r1".to_owned().into();
            r.rollout_variation_id = FmeId::from(1).into();
            r.experiment_id = Field::Null;
            r.experiment_variation_id = FmeId::from(-1).into();
            r.not_in_holdout_id = Field::Value(vec![
                FmeId::number("5.0").expect("number"),
                FmeId::from("h"),
            ]);
        });
        assert_eq!(
            encode_feature(&rollout).expect("encodes"),
            b"\x01\x00\x02\x00\x3e\x02\x04f_r1\x02\x00\x02\x01\x00\x02\x00\x01\x00\x02\x02\x01\x035.0\x02\x01h\x00"
        );
        let mut other = FeatureRecord::new("f", "u");
        other.set_other_fields_unchecked(Some(r#"{"x":1}"#.into()));
        assert_eq!(
            encode_feature(&other).expect("encodes"),
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x07{\"x\":1}"
        );
    }

    #[test]
    fn feature_values_round_trip_and_damage_is_an_error() {
        let rec = feature(|r| {
            r.feature_id = FmeId::from(i64::MIN).into();
            r.experiment_key = Field::Null;
            r.is_in_holdout_id = Field::Value(vec![]);
            r.set_other_fields_unchecked(Some(r#"{"a":[1, 2],"b":null}"#.into()));
        });
        let bytes = encode_feature(&rec).expect("encodes");
        assert_eq!(decode_feature("u", "f", &bytes), Ok(rec.clone()));
        let key = encode_item_key("u", &feature_item("f")).expect("key");
        assert_eq!(decode_feature_record(&key, &bytes), Ok(rec));
        assert!(decode_feature_record(b"\x01\x00uf", &bytes).is_err());
        assert!(decode_feature("u", "f", b"").is_err());
        assert!(decode_feature("u", "f", b"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00").is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_feature("u", "f", &trailing).is_err());
        assert!(decode_feature("u", "f", &bytes[..bytes.len() - 1]).is_err());
        // A number stored as text when it is a plain integer has two encodings: refused.
        assert!(
            decode_feature(
                "u",
                "f",
                b"\x01\x02\x01\x0212\x00\x00\x00\x00\x00\x00\x00\x00\x00"
            )
            .is_err()
        );
        assert!(
            decode_feature(
                "u",
                "f",
                b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02[]"
            )
            .is_err()
        );
    }

    #[test]
    fn values_of_the_largest_size_read_back() {
        // Every length the writer accepts, up to the last byte, reads back: bincode's limit counts 8 bytes per
        // length, so a reader limited to the writer's size refused names 9 bytes short of it.
        for short in [0, 1, 7, 9, 10, 30] {
            // 5 bytes of length and 2 option tags besides the name.
            let mut name = "v".repeat(MAX_VALUE_LEN - 7 - short);
            let mut m = map(None);
            m.variation_name = std::mem::take(&mut name);
            let bytes = encode_value(&m, None).expect("fits");
            let read = decode_value(&bytes).expect("reads back");
            assert_eq!(read.variation_name.len(), m.variation_name.len());
            assert!(agree(&bytes));
        }
        // An FME record whose value is all small ids: 2 bytes each on disk, far more by bincode's count.
        let mut ids = MAX_VALUE_LEN / 2;
        let (rec, bytes) = loop {
            let rec = feature(|r| r.is_in_holdout_id = Field::Value(vec![FmeId::from(1); ids]));
            match encode_feature(&rec) {
                Ok(bytes) => break (rec, bytes),
                Err(_) => ids -= 1,
            }
        };
        assert!(bytes.len() + 16 > MAX_VALUE_LEN, "{} bytes", bytes.len());
        assert_eq!(decode_feature("u", "f", &bytes), Ok(rec));
    }

    #[test]
    fn items_are_told_apart_by_their_first_byte() {
        assert_eq!(classify_item(b"camp"), Item::Campaign("camp"));
        assert_eq!(classify_item(b"\xffcamp"), Item::Feature("camp"));
        assert_eq!(classify_item(b"\xff"), Item::Unknown);
        assert_eq!(classify_item(b"\xff\xfe"), Item::Unknown);
        assert_eq!(classify_item(b"\xfe"), Item::Unknown);
        // Every feature item is outside UTF-8, so it never equals a campaign key.
        assert!(std::str::from_utf8(&feature_item("camp")).is_err());
    }
}
