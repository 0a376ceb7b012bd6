//! The record VWO's FME SDKs (Feature Management and Experimentation: Node, Python, Java, Go, PHP, .NET) keep
//! per user and feature flag through their storage connector: [`FeatureRecord`]. docs/FME.md lists what each SDK
//! writes and reads, with the SDK sources.
//!
//! Every member the SDKs know is typed; "absent" and `null` are kept apart ([`Field`]), ids keep the exact JSON
//! they came as ([`FmeId`]), and members no SDK writes today are kept as raw JSON text, byte for byte, so a newer
//! SDK's record survives a round trip through a store.

use std::fmt;

use crate::Result;
use crate::model::check_id;

/// Feature-key prefixes under which the SDKs store a mutually exclusive group's winner: `_vwo_meta_meg_<groupId>`
/// (Node, Python, Java, Go, .NET) and `_wingify_meta_meg_<groupId>` (the current PHP SDK).
pub const MEG_PREFIXES: [&str; 2] = ["_vwo_meta_meg_", "_wingify_meta_meg_"];

/// A member of a JSON record that may be missing, `null`, or hold a value: the SDKs write all three (Python and
/// PHP pass `null` for what does not apply, Java and Go leave it out), and a reader may tell them apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Field<T> {
    /// The member is not in the record.
    #[default]
    Absent,
    /// The member is there with the value `null`.
    Null,
    /// The member holds a value.
    Value(T),
}

impl<T> Field<T> {
    /// The value, if the member holds one.
    pub fn value(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            Field::Absent | Field::Null => None,
        }
    }

    /// True when the member is not in the record at all.
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// `Value` for `Some`, `Absent` for `None`.
    pub fn from_option(value: Option<T>) -> Field<T> {
        value.map_or(Field::Absent, Field::Value)
    }
}

impl<T> From<T> for Field<T> {
    fn from(value: T) -> Field<T> {
        Field::Value(value)
    }
}

/// An id in an FME record (a feature, rule, variation or holdout id), as the JSON value it came as.
///
/// The SDKs write ids as JSON integers taken from the settings file; Java, Go and .NET read them back into
/// integer fields, so an id must come back as the same number, never as a string of digits. An id keeps its exact
/// JSON text: an integer (the common case, stored compactly), any other JSON number literal (`5.0`, `1e3`, kept as
/// written), or a string (Node's settings schema allows string ids).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FmeId(IdRepr);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum IdRepr {
    /// A number whose JSON text is exactly the decimal form of this integer.
    Int(i64),
    /// Any other JSON number literal, e.g. `5.0`, `-0`, `1e3`, `18446744073709551616`.
    Number(Box<str>),
    /// A JSON string.
    Text(Box<str>),
}

/// The parts of an [`FmeId`], for the value encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdParts<'a> {
    Int(i64),
    Number(&'a str),
    Text(&'a str),
}

impl FmeId {
    /// The id written as the JSON number literal `text` (e.g. `"12"`, `"-1"`, `"5.0"`); `None` if `text` is not a
    /// JSON number.
    pub fn number(text: &str) -> Option<FmeId> {
        if !is_json_number(text) {
            return None;
        }
        Some(FmeId(match text.parse::<i64>() {
            Ok(n) if n.to_string() == text => IdRepr::Int(n),
            _ => IdRepr::Number(text.into()),
        }))
    }

    /// The integer, when the id is a JSON number written as a plain integer that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            IdRepr::Int(n) => Some(n),
            IdRepr::Number(_) | IdRepr::Text(_) => None,
        }
    }

    /// The string, when the id is a JSON string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.0 {
            IdRepr::Text(s) => Some(s),
            IdRepr::Int(_) | IdRepr::Number(_) => None,
        }
    }

    /// True when the id is a JSON number (of any form), false for a string.
    pub fn is_number(&self) -> bool {
        !matches!(self.0, IdRepr::Text(_))
    }

    pub(crate) fn parts(&self) -> IdParts<'_> {
        match &self.0 {
            IdRepr::Int(n) => IdParts::Int(*n),
            IdRepr::Number(s) => IdParts::Number(s),
            IdRepr::Text(s) => IdParts::Text(s),
        }
    }

    /// Rebuilds an id from its parts; `None` if a number's text is not a JSON number, or is an integer that
    /// should have been stored as [`IdParts::Int`] (so every id has one encoding).
    pub(crate) fn from_parts(parts: IdParts<'_>) -> Option<FmeId> {
        match parts {
            IdParts::Int(n) => Some(FmeId(IdRepr::Int(n))),
            IdParts::Number(s) => match FmeId::number(s)? {
                id @ FmeId(IdRepr::Number(_)) => Some(id),
                _ => None,
            },
            IdParts::Text(s) => Some(FmeId(IdRepr::Text(s.into()))),
        }
    }

    /// Appends the id's JSON text.
    fn write_json(&self, out: &mut String) {
        match &self.0 {
            IdRepr::Int(n) => out.push_str(&n.to_string()),
            IdRepr::Number(s) => out.push_str(s),
            IdRepr::Text(s) => push_json_string(out, s),
        }
    }
}

impl From<i64> for FmeId {
    fn from(n: i64) -> FmeId {
        FmeId(IdRepr::Int(n))
    }
}

impl From<i32> for FmeId {
    fn from(n: i32) -> FmeId {
        FmeId(IdRepr::Int(n.into()))
    }
}

impl From<u32> for FmeId {
    fn from(n: u32) -> FmeId {
        FmeId(IdRepr::Int(n.into()))
    }
}

impl From<&str> for FmeId {
    /// A string id (not parsed as a number: use [`FmeId::number`] for that).
    fn from(s: &str) -> FmeId {
        FmeId(IdRepr::Text(s.into()))
    }
}

impl fmt::Display for FmeId {
    /// The id's JSON text: `12`, `5.0`, or `"abc"` with its quotes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_json(&mut out);
        f.write_str(&out)
    }
}

/// One user's record for one feature flag, as VWO's FME SDKs pass it to their storage connector's `set` and
/// expect it back from `get` (docs/FME.md). A mutually exclusive group's winner is a record too, under the
/// feature key `_vwo_meta_meg_<groupId>` ([`FeatureRecord::meg_group`]).
///
/// Its JSON form ([`FeatureRecord::to_json`]) uses the SDKs' camelCase member names; members that were absent stay
/// absent, `null`s stay `null`, ids keep their JSON text, and members unknown to this version follow, byte for
/// byte, in their original order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FeatureRecord {
    /// The feature flag's key (`featureKey`), or `_vwo_meta_meg_<groupId>` for a group's winner.
    pub feature_key: String,
    /// The user's id (`userId`).
    pub user_id: String,
    /// `featureId`: the flag's id (Node, Go and PHP write it; Node and Go honour a stored variation only while the
    /// settings still have a feature of this id).
    pub feature_id: Field<FmeId>,
    /// `rolloutId`: the rollout rule the user passed.
    pub rollout_id: Field<FmeId>,
    /// `rolloutKey`: that rule's key.
    pub rollout_key: Field<String>,
    /// `rolloutVariationId`: the rollout's variation.
    pub rollout_variation_id: Field<FmeId>,
    /// `experimentId`: the experiment (or, in a group's record, the winning campaign).
    pub experiment_id: Field<FmeId>,
    /// `experimentKey`: that experiment's key.
    pub experiment_key: Field<String>,
    /// `experimentVariationId`: the experiment's variation (`-1` in a group's record unless the winner is a
    /// personalize campaign).
    pub experiment_variation_id: Field<FmeId>,
    /// `isInHoldoutId`: the holdout groups the user fell into.
    pub is_in_holdout_id: Field<Vec<FmeId>>,
    /// `notInHoldoutId`: the holdout groups evaluated and not matched.
    pub not_in_holdout_id: Field<Vec<FmeId>>,
    /// Every other member, as the text of one JSON object (`{"a":1,"b":[2]}`) with the members in their original
    /// order and each value byte for byte; `None` when there are none.
    other_fields: Option<Box<str>>,
}

/// The typed members of a [`FeatureRecord`], for the one table of their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FmeField {
    /// `featureKey`
    FeatureKey,
    /// `userId`
    UserId,
    /// `featureId`
    FeatureId,
    /// `rolloutId`
    RolloutId,
    /// `rolloutKey`
    RolloutKey,
    /// `rolloutVariationId`
    RolloutVariationId,
    /// `experimentId`
    ExperimentId,
    /// `experimentKey`
    ExperimentKey,
    /// `experimentVariationId`
    ExperimentVariationId,
    /// `isInHoldoutId`
    IsInHoldoutId,
    /// `notInHoldoutId`
    NotInHoldoutId,
}

/// Every typed member with the names it is read under; the first is the one written (camelCase, as every FME SDK
/// writes and reads). snake_case and PascalCase are what connectors that serialise the SDKs' models with their
/// language's defaults write; `user` is the name of the user member in the Java, Go and .NET models.
const FME_TABLE: &[(FmeField, &[&str])] = &[
    (
        FmeField::FeatureKey,
        &["featureKey", "feature_key", "FeatureKey"],
    ),
    (
        FmeField::UserId,
        &["userId", "user_id", "UserId", "user", "User"],
    ),
    (
        FmeField::FeatureId,
        &["featureId", "feature_id", "FeatureId"],
    ),
    (
        FmeField::RolloutId,
        &["rolloutId", "rollout_id", "RolloutId"],
    ),
    (
        FmeField::RolloutKey,
        &["rolloutKey", "rollout_key", "RolloutKey"],
    ),
    (
        FmeField::RolloutVariationId,
        &[
            "rolloutVariationId",
            "rollout_variation_id",
            "RolloutVariationId",
        ],
    ),
    (
        FmeField::ExperimentId,
        &["experimentId", "experiment_id", "ExperimentId"],
    ),
    (
        FmeField::ExperimentKey,
        &["experimentKey", "experiment_key", "ExperimentKey"],
    ),
    (
        FmeField::ExperimentVariationId,
        &[
            "experimentVariationId",
            "experiment_variation_id",
            "ExperimentVariationId",
        ],
    ),
    (
        FmeField::IsInHoldoutId,
        &["isInHoldoutId", "is_in_holdout_id", "IsInHoldoutId"],
    ),
    (
        FmeField::NotInHoldoutId,
        &["notInHoldoutId", "not_in_holdout_id", "NotInHoldoutId"],
    ),
];

impl FmeField {
    /// The member an SDK or connector means by `key`, if it is a typed one.
    pub fn from_key(key: &str) -> Option<FmeField> {
        FME_TABLE
            .iter()
            .find(|(_, names)| names.contains(&key))
            .map(|&(field, _)| field)
    }

    /// The names this member is read under; the first is the one written.
    pub fn names(self) -> &'static [&'static str] {
        FME_TABLE
            .iter()
            .find(|(field, _)| *field == self)
            .map_or(&[], |&(_, names)| names)
    }

    /// The name written (camelCase).
    pub fn name(self) -> &'static str {
        self.names().first().copied().unwrap_or_default()
    }
}

impl FeatureRecord {
    /// A record with only its feature key and user id.
    pub fn new(feature_key: impl Into<String>, user_id: impl Into<String>) -> FeatureRecord {
        FeatureRecord {
            feature_key: feature_key.into(),
            user_id: user_id.into(),
            ..FeatureRecord::default()
        }
    }

    /// The group id when this is a mutually exclusive group's record (feature key `_vwo_meta_meg_<groupId>` or
    /// `_wingify_meta_meg_<groupId>`).
    pub fn meg_group(&self) -> Option<&str> {
        MEG_PREFIXES
            .iter()
            .find_map(|p| self.feature_key.strip_prefix(p))
            .filter(|group| !group.is_empty())
    }

    /// The members this version does not know, as one JSON object's text, byte for byte; `None` when there are
    /// none.
    pub fn other_fields(&self) -> Option<&str> {
        self.other_fields.as_deref()
    }

    /// Drops the members this version does not know.
    pub fn clear_other_fields(&mut self) {
        self.other_fields = None;
    }

    /// Sets the other members from the text of a JSON object without any typed member (checked by the caller:
    /// the JSON reader and the value decoder).
    pub(crate) fn set_other_fields_unchecked(&mut self, other: Option<Box<str>>) {
        self.other_fields = other;
    }

    /// Checks the feature key and the user id: [`crate::Error::InvalidKey`] if either is empty or longer than
    /// [`crate::MAX_ID_LEN`] bytes.
    pub fn check(&self) -> Result<()> {
        check_id("feature_key", &self.feature_key)?;
        check_id("user_id", &self.user_id)
    }

    /// The record as the SDKs read it back: one JSON object with camelCase member names, `featureKey` and `userId`
    /// first, then the typed members that are not absent in a fixed order, then the other members as they came.
    ///
    /// ```
    /// use ussdb::{FeatureRecord, FmeId};
    /// let mut rec = FeatureRecord::new("checkout", "u1");
    /// rec.rollout_id = FmeId::from(7).into();
    /// rec.rollout_key = "checkout_rollout1".to_owned().into();
    /// rec.rollout_variation_id = FmeId::from(1).into();
    /// assert_eq!(
    ///     rec.to_json(),
    ///     r#"{"featureKey":"checkout","userId":"u1","rolloutId":7,"rolloutKey":"checkout_rollout1","rolloutVariationId":1}"#
    /// );
    /// ```
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push('{');
        push_member(&mut out, FmeField::FeatureKey, |o| {
            push_json_string(o, &self.feature_key)
        });
        push_member(&mut out, FmeField::UserId, |o| {
            push_json_string(o, &self.user_id)
        });
        let ids = [
            (FmeField::FeatureId, &self.feature_id),
            (FmeField::RolloutId, &self.rollout_id),
        ];
        for (field, value) in ids {
            push_field(&mut out, field, value, |o, id| id.write_json(o));
        }
        push_field(&mut out, FmeField::RolloutKey, &self.rollout_key, |o, s| {
            push_json_string(o, s)
        });
        let ids = [
            (FmeField::RolloutVariationId, &self.rollout_variation_id),
            (FmeField::ExperimentId, &self.experiment_id),
        ];
        for (field, value) in ids {
            push_field(&mut out, field, value, |o, id| id.write_json(o));
        }
        push_field(
            &mut out,
            FmeField::ExperimentKey,
            &self.experiment_key,
            |o, s| push_json_string(o, s),
        );
        push_field(
            &mut out,
            FmeField::ExperimentVariationId,
            &self.experiment_variation_id,
            |o, id| id.write_json(o),
        );
        let lists = [
            (FmeField::IsInHoldoutId, &self.is_in_holdout_id),
            (FmeField::NotInHoldoutId, &self.not_in_holdout_id),
        ];
        for (field, value) in lists {
            push_field(&mut out, field, value, |o, ids| {
                o.push('[');
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        o.push(',');
                    }
                    id.write_json(o);
                }
                o.push(']');
            });
        }
        if let Some(other) = &self.other_fields {
            // `other` is a non-empty JSON object: splice its members in after ours.
            let inner = other
                .trim()
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .unwrap_or_default();
            if !inner.trim().is_empty() {
                out.push(',');
                out.push_str(inner);
            }
        }
        out.push('}');
        out
    }
}

fn push_member(out: &mut String, field: FmeField, value: impl FnOnce(&mut String)) {
    if !out.ends_with('{') {
        out.push(',');
    }
    push_json_string(out, field.name());
    out.push(':');
    value(out);
}

fn push_field<T>(
    out: &mut String,
    field: FmeField,
    value: &Field<T>,
    write: impl FnOnce(&mut String, &T),
) {
    match value {
        Field::Absent => {}
        Field::Null => push_member(out, field, |o| o.push_str("null")),
        Field::Value(v) => push_member(out, field, |o| write(o, v)),
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes (quote, backslash, control characters only).
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// True when `s` is exactly one JSON number literal (RFC 8259 grammar: no leading `+`, no leading zeros, digits on
/// both sides of a `.`).
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let digits_from = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(b.first() == Some(&b'-'));
    i = match b.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits_from(i + 1),
        _ => return false,
    };
    if b.get(i) == Some(&b'.') {
        let end = digits_from(i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits_from(i);
        if end == i {
            return false;
        }
        i = end;
    }
    i == b.len()
}

#[cfg(feature = "json")]
mod json {
    //! Reading the record from JSON (needs serde_json, behind the `json` feature).

    use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use std::borrow::Cow;
    use std::fmt;

    use super::{FeatureRecord, Field, FmeField, FmeId, MEG_PREFIXES, push_json_string};
    use crate::{Error, Result};

    /// A JSON object's members in order, values unparsed.
    struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

    impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Members<'a>, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Members<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object (an FME record with featureKey and userId)")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Members<'a>, A::Error> {
                    let mut members = Vec::new();
                    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                        let value = map.next_value::<&'de RawValue>()?;
                        members.push((key, value));
                    }
                    Ok(Members(members))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }

    fn json_error(message: impl fmt::Display) -> Error {
        Error::Json {
            context: "FME record".into(),
            source: <serde_json::Error as de::Error>::custom(message),
        }
    }

    fn parse_members(json: &str) -> Result<Members<'_>> {
        serde_json::from_str(json).map_err(|source| Error::Json {
            context: "FME record".into(),
            source,
        })
    }

    /// What one member's value may be.
    fn string(field: FmeField, raw: &RawValue) -> Result<Field<String>> {
        match raw.get() {
            "null" => Ok(Field::Null),
            text if text.starts_with('"') => serde_json::from_str::<String>(text)
                .map(Field::Value)
                .map_err(|source| Error::Json {
                    context: format!("FME record member `{}`", field.name()),
                    source,
                }),
            text => Err(json_error(format_args!(
                "member `{}` must be a string or null, not {}",
                field.name(),
                kind_of(text)
            ))),
        }
    }

    fn id_of(field: FmeField, text: &str) -> Result<FmeId> {
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(|source| Error::Json {
                context: format!("FME record member `{}`", field.name()),
                source,
            })?;
            return Ok(FmeId::from(s.as_str()));
        }
        FmeId::number(text).ok_or_else(|| {
            json_error(format_args!(
                "member `{}` must hold ids (numbers or strings), not {}",
                field.name(),
                kind_of(text)
            ))
        })
    }

    fn id(field: FmeField, raw: &RawValue) -> Result<Field<FmeId>> {
        match raw.get() {
            "null" => Ok(Field::Null),
            text => id_of(field, text).map(Field::Value),
        }
    }

    fn ids(field: FmeField, raw: &RawValue) -> Result<Field<Vec<FmeId>>> {
        match raw.get() {
            "null" => Ok(Field::Null),
            text if text.starts_with('[') => {
                let items: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|source| Error::Json {
                        context: format!("FME record member `{}`", field.name()),
                        source,
                    })?;
                items
                    .iter()
                    .map(|item| id_of(field, item.get()))
                    .collect::<Result<Vec<_>>>()
                    .map(Field::Value)
            }
            text => Err(json_error(format_args!(
                "member `{}` must be an array of ids or null, not {}",
                field.name(),
                kind_of(text)
            ))),
        }
    }

    fn kind_of(text: &str) -> &'static str {
        match text.as_bytes().first() {
            Some(b'"') => "a string",
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }
    }

    /// The record of `members`; the ids may be missing (the caller fills them from a storage key).
    fn record_of(members: Members<'_>) -> Result<(FeatureRecord, Option<String>, Option<String>)> {
        let mut rec = FeatureRecord::default();
        let (mut feature_key, mut user_id) = (None, None);
        let mut seen: Vec<FmeField> = Vec::new();
        let mut other = String::new();
        let mut other_names: Vec<Cow<'_, str>> = Vec::new();
        for (name, raw) in members.0 {
            let Some(field) = FmeField::from_key(&name) else {
                if other_names.contains(&name) {
                    return Err(json_error(format_args!("duplicate member `{name}`")));
                }
                other.push(if other.is_empty() { '{' } else { ',' });
                push_json_string(&mut other, &name);
                other.push(':');
                other.push_str(raw.get());
                other_names.push(name);
                continue;
            };
            if seen.contains(&field) {
                return Err(json_error(format_args!(
                    "member `{}` given twice (as `{name}`; accepted names: {})",
                    field.name(),
                    field.names().join(", ")
                )));
            }
            seen.push(field);
            match field {
                FmeField::FeatureKey | FmeField::UserId => {
                    let Field::Value(s) = string(field, raw)? else {
                        return Err(json_error(format_args!(
                            "member `{}` must be a string, not null",
                            field.name()
                        )));
                    };
                    match field {
                        FmeField::FeatureKey => feature_key = Some(s),
                        _ => user_id = Some(s),
                    }
                }
                FmeField::FeatureId => rec.feature_id = id(field, raw)?,
                FmeField::RolloutId => rec.rollout_id = id(field, raw)?,
                FmeField::RolloutKey => rec.rollout_key = string(field, raw)?,
                FmeField::RolloutVariationId => rec.rollout_variation_id = id(field, raw)?,
                FmeField::ExperimentId => rec.experiment_id = id(field, raw)?,
                FmeField::ExperimentKey => rec.experiment_key = string(field, raw)?,
                FmeField::ExperimentVariationId => {
                    rec.experiment_variation_id = id(field, raw)?;
                }
                FmeField::IsInHoldoutId => rec.is_in_holdout_id = ids(field, raw)?,
                FmeField::NotInHoldoutId => rec.not_in_holdout_id = ids(field, raw)?,
            }
        }
        if !other.is_empty() {
            other.push('}');
            rec.set_other_fields_unchecked(Some(other.into_boxed_str()));
        }
        Ok((rec, feature_key, user_id))
    }

    fn missing(field: FmeField) -> Error {
        json_error(format_args!(
            "missing member `{}` (accepted names: {})",
            field.name(),
            field.names().join(", ")
        ))
    }

    impl FeatureRecord {
        /// Reads a record from the JSON an FME SDK passes to its connector's `set`, in any connector's style:
        ///
        /// - one object with `featureKey` and `userId` (camelCase as the SDKs write; snake_case, PascalCase and
        ///   `user` for `userId` as the SDKs' models serialise by default are read too);
        /// - the way the SDKs' example connectors keep it: a one-member object whose name is the storage key
        ///   `featureKey_userId` (Node, Python, PHP, Java) or `featureKey:userId` (Go) and whose value is the
        ///   record, which may lack `featureKey` and `userId` (see [`FeatureRecord::from_keyed_json`]).
        ///
        /// Typed members of the wrong JSON type, duplicate members and invalid JSON are [`Error::Json`]; an empty
        /// or too long feature key or user id is [`Error::InvalidKey`]. Unknown members are kept byte for byte.
        ///
        /// ```
        /// let rec = ussdb::FeatureRecord::from_json(
        ///     r#"{"featureKey":"f","userId":"u","experimentId":12,"experimentKey":"f_ab","experimentVariationId":2,"rolloutId":null,"x":[1, 2]}"#,
        /// )?;
        /// assert_eq!(rec.experiment_variation_id.value().and_then(|id| id.as_i64()), Some(2));
        /// assert_eq!(
        ///     rec.to_json(),
        ///     r#"{"featureKey":"f","userId":"u","rolloutId":null,"experimentId":12,"experimentKey":"f_ab","experimentVariationId":2,"x":[1, 2]}"#
        /// );
        /// # Ok::<(), ussdb::Error>(())
        /// ```
        pub fn from_json(json: &str) -> Result<FeatureRecord> {
            let members = parse_members(json)?;
            // The keyed form: one member, named like a storage key, holding an object without our ids.
            if let [(name, raw)] = members.0.as_slice()
                && FmeField::from_key(name).is_none()
                && raw.get().starts_with('{')
            {
                return FeatureRecord::from_keyed_json(name, raw.get());
            }
            let (mut rec, feature_key, user_id) = record_of(members)?;
            rec.feature_key = feature_key.ok_or_else(|| missing(FmeField::FeatureKey))?;
            rec.user_id = user_id.ok_or_else(|| missing(FmeField::UserId))?;
            rec.check()?;
            Ok(rec)
        }

        /// Reads a record kept under `storage_key` by a connector that joins feature key and user id into one
        /// key, as the SDKs' examples do (`featureKey_userId`, or `featureKey:userId` in Go's). The record's own
        /// `featureKey` and `userId` win when present, and must then agree with the storage key; a missing one is
        /// taken from the storage key. When both are missing the key must split one way only: at a MEG prefix
        /// and its group number, at its only `:`, or at its only `_`; otherwise it is [`Error::Json`] (add
        /// `featureKey` and `userId` to such records before importing them).
        ///
        /// ```
        /// let rec = ussdb::FeatureRecord::from_keyed_json(
        ///     "checkout_user-7",
        ///     r#"{"rolloutKey":"checkout_r1","rolloutVariationId":1,"rolloutId":3}"#,
        /// )?;
        /// assert_eq!((rec.feature_key.as_str(), rec.user_id.as_str()), ("checkout", "user-7"));
        /// # Ok::<(), ussdb::Error>(())
        /// ```
        pub fn from_keyed_json(storage_key: &str, json: &str) -> Result<FeatureRecord> {
            let (mut rec, feature_key, user_id) = record_of(parse_members(json)?)?;
            let (feature_key, user_id) =
                split_storage_key(storage_key, feature_key, user_id).map_err(json_error)?;
            rec.feature_key = feature_key;
            rec.user_id = user_id;
            rec.check()?;
            Ok(rec)
        }
    }

    impl FeatureRecord {
        /// The records of an object keyed by storage keys (`{"f_u1": {...}, "f:u2": {...}}`, as the SDKs' example
        /// connectors hold them), or `None` when `json` is not such an object (not an object, empty, or with a
        /// member that is not an object).
        pub(crate) fn keyed_records(json: &str) -> Option<Result<Vec<FeatureRecord>>> {
            let members = parse_members(json).ok()?;
            if members.0.is_empty() || !members.0.iter().all(|(_, raw)| raw.get().starts_with('{'))
            {
                return None;
            }
            Some(
                members
                    .0
                    .iter()
                    .map(|(key, raw)| FeatureRecord::from_keyed_json(key, raw.get()))
                    .collect(),
            )
        }
    }

    /// The separators the SDKs' example connectors join feature key and user id with.
    const SEPARATORS: [char; 2] = ['_', ':'];

    fn split_storage_key(
        key: &str,
        feature_key: Option<String>,
        user_id: Option<String>,
    ) -> std::result::Result<(String, String), String> {
        let joined = |f: &str, u: &str| SEPARATORS.iter().any(|&sep| key == format!("{f}{sep}{u}"));
        match (feature_key, user_id) {
            (Some(f), Some(u)) if joined(&f, &u) => Ok((f, u)),
            (Some(f), Some(u)) => Err(format!(
                "storage key {key:?} does not join feature key {f:?} and user id {u:?}"
            )),
            (Some(f), None) => key
                .strip_prefix(f.as_str())
                .and_then(|rest| rest.strip_prefix(SEPARATORS))
                .filter(|u| !u.is_empty())
                .map(|u| (f.clone(), u.to_owned()))
                .ok_or_else(|| {
                    format!("storage key {key:?} does not start with feature key {f:?}")
                }),
            (None, Some(u)) => key
                .strip_suffix(u.as_str())
                .and_then(|rest| rest.strip_suffix(SEPARATORS))
                .filter(|f| !f.is_empty())
                .map(|f| (f.to_owned(), u.clone()))
                .ok_or_else(|| format!("storage key {key:?} does not end with user id {u:?}")),
            (None, None) => split_bare_key(key).ok_or_else(|| {
                format!(
                    "storage key {key:?} does not split one way only into feature key and user id; \
                     add `featureKey` and `userId` to the record"
                )
            }),
        }
    }

    fn split_bare_key(key: &str) -> Option<(String, String)> {
        let at = |i: usize| {
            let (f, rest) = key.split_at_checked(i)?;
            let u = rest.get(1..)?;
            (!f.is_empty() && !u.is_empty()).then(|| (f.to_owned(), u.to_owned()))
        };
        for prefix in MEG_PREFIXES {
            if let Some(rest) = key.strip_prefix(prefix) {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let sep = rest.get(digits..)?.chars().next()?;
                return (digits > 0 && SEPARATORS.contains(&sep))
                    .then(|| at(prefix.len() + digits))
                    .flatten();
            }
        }
        for sep in [':', '_'] {
            let mut found = key.match_indices(sep);
            if let (Some((i, _)), None) = (found.next(), found.next()) {
                return at(i);
            }
            if key.contains(sep) {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn numbers_keep_their_form() {
        for (text, int) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("12", Some(12)),
            ("9223372036854775807", Some(i64::MAX)),
            ("9223372036854775808", None),
            ("5.0", None),
            ("-0", None),
            ("1e3", None),
            ("1.5E-2", None),
        ] {
            let id = FmeId::number(text).expect(text);
            assert_eq!(id.as_i64(), int, "{text}");
            assert_eq!(id.to_string(), text);
            assert!(id.is_number());
            assert_eq!(FmeId::from_parts(id.parts()), Some(id.clone()));
        }
        for bad in [
            "", "-", "01", "+1", "1.", ".5", "1e", "1e+", "0x10", " 1", "1 ", "NaN",
        ] {
            assert_eq!(FmeId::number(bad), None, "{bad:?}");
        }
        assert_eq!(FmeId::from_parts(IdParts::Number("12")), None);
        assert_eq!(FmeId::from_parts(IdParts::Number("x")), None);
        let text = FmeId::from("12");
        assert_eq!((text.as_str(), text.as_i64()), (Some("12"), None));
        assert_eq!(text.to_string(), "\"12\"");
    }

    #[test]
    fn to_json_writes_absent_null_and_values_and_escapes() {
        let mut rec = FeatureRecord::new("f\"1", "u\n\u{1}é");
        assert_eq!(
            rec.to_json(),
            r#"{"featureKey":"f\"1","userId":"u\n\u0001é"}"#
        );
        rec.rollout_id = Field::Null;
        rec.experiment_id = FmeId::from(-1).into();
        rec.not_in_holdout_id = Field::Value(vec![FmeId::from(3), FmeId::from("h")]);
        rec.is_in_holdout_id = Field::Value(vec![]);
        assert_eq!(
            rec.to_json(),
            r#"{"featureKey":"f\"1","userId":"u\n\u0001é","rolloutId":null,"experimentId":-1,"isInHoldoutId":[],"notInHoldoutId":[3,"h"]}"#
        );
    }

    #[test]
    fn meg_group_is_read_from_the_feature_key() {
        assert_eq!(
            FeatureRecord::new("_vwo_meta_meg_12", "u").meg_group(),
            Some("12")
        );
        assert_eq!(
            FeatureRecord::new("_wingify_meta_meg_3", "u").meg_group(),
            Some("3")
        );
        assert_eq!(FeatureRecord::new("_vwo_meta_meg_", "u").meg_group(), None);
        assert_eq!(FeatureRecord::new("checkout", "u").meg_group(), None);
    }

    #[test]
    fn every_field_has_names_and_every_name_maps_back() {
        for (field, names) in FME_TABLE {
            assert_eq!(field.names(), *names);
            for name in *names {
                assert_eq!(FmeField::from_key(name), Some(*field), "{name}");
            }
        }
        assert_eq!(FmeField::from_key("context"), None);
    }

    #[test]
    fn check_refuses_empty_and_long_ids() {
        assert!(FeatureRecord::new("f", "u").check().is_ok());
        for (rec, field) in [
            (FeatureRecord::new("", "u"), "feature_key"),
            (FeatureRecord::new("f", ""), "user_id"),
            (FeatureRecord::new("f".repeat(1025), "u"), "feature_key"),
            (FeatureRecord::new("f", "u".repeat(1025)), "user_id"),
        ] {
            match rec.check() {
                Err(Error::InvalidKey { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }

    #[cfg(feature = "json")]
    mod json {
        use super::*;

        fn parse(json: &str) -> FeatureRecord {
            FeatureRecord::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"))
        }

        #[test]
        fn python_sdk_record_round_trips_byte_for_byte() {
            // What vwo-fme-python-sdk 1.65 passes to set() for a rollout decision (json.dumps of its dict).
            let json = r#"{"featureKey":"feature1","userId":"user-1","rolloutId":31,"rolloutKey":"feature1_rolloutRule1","rolloutVariationId":1,"experimentId":null,"experimentKey":null,"experimentVariationId":null,"isInHoldoutId":null,"notInHoldoutId":[]}"#;
            let rec = parse(json);
            assert_eq!(rec.rollout_id, Field::Value(FmeId::from(31)));
            assert_eq!(rec.experiment_key, Field::Null);
            assert_eq!(rec.feature_id, Field::Absent);
            assert_eq!(rec.not_in_holdout_id, Field::Value(vec![]));
            assert_eq!(rec.to_json(), json);
            assert_eq!(parse(&rec.to_json()), rec);
        }

        #[test]
        fn node_sdk_record_and_unknown_members_round_trip() {
            let json = r#"{"featureKey":"f","featureId":7,"userId":"u","experimentId":12,"experimentKey":"f_ab1","experimentVariationId":2,"isInHoldoutId":[41,42],"notInHoldoutId":[43],"holdoutGroupId":  41 ,"context":{"id":"u","nested":[1.50, "x"]}}"#;
            let rec = parse(json);
            assert_eq!(rec.feature_id.value().and_then(FmeId::as_i64), Some(7));
            assert_eq!(
                rec.other_fields(),
                Some(r#"{"holdoutGroupId":41,"context":{"id":"u","nested":[1.50, "x"]}}"#)
            );
            assert_eq!(
                rec.to_json(),
                r#"{"featureKey":"f","userId":"u","featureId":7,"experimentId":12,"experimentKey":"f_ab1","experimentVariationId":2,"isInHoldoutId":[41,42],"notInHoldoutId":[43],"holdoutGroupId":41,"context":{"id":"u","nested":[1.50, "x"]}}"#
            );
            assert_eq!(parse(&rec.to_json()), rec);
        }

        #[test]
        fn meg_record_keeps_minus_one() {
            let json = r#"{"featureKey":"_vwo_meta_meg_5","userId":"u","experimentId":101,"experimentKey":"camp_b","experimentVariationId":-1}"#;
            let rec = parse(json);
            assert_eq!(rec.meg_group(), Some("5"));
            assert_eq!(
                rec.experiment_variation_id.value().and_then(FmeId::as_i64),
                Some(-1)
            );
            assert_eq!(rec.to_json(), json);
        }

        #[test]
        fn other_key_styles_are_read_and_written_camel_case() {
            let want = r#"{"featureKey":"f","userId":"u","rolloutId":3,"rolloutKey":"r","rolloutVariationId":1}"#;
            for json in [
                r#"{"feature_key":"f","user_id":"u","rollout_id":3,"rollout_key":"r","rollout_variation_id":1}"#,
                r#"{"FeatureKey":"f","User":"u","RolloutId":3,"RolloutKey":"r","RolloutVariationId":1}"#,
                r#"{"featureKey":"f","user":"u","rolloutId":3,"rolloutKey":"r","rolloutVariationId":1}"#,
            ] {
                assert_eq!(parse(json).to_json(), want, "{json}");
            }
        }

        #[test]
        fn keyed_forms_of_the_example_connectors() {
            let body = r#"{"rolloutKey":"r","rolloutVariationId":1,"rolloutId":3,"experimentKey":null,"experimentVariationId":null,"experimentId":null}"#;
            for (key, feature, user) in [
                ("checkout_u1", "checkout", "u1"),
                ("checkout:user_1", "checkout", "user_1"),
                ("_vwo_meta_meg_12_user_1", "_vwo_meta_meg_12", "user_1"),
                ("_wingify_meta_meg_3:u", "_wingify_meta_meg_3", "u"),
            ] {
                let rec = FeatureRecord::from_keyed_json(key, body).expect(key);
                assert_eq!(
                    (rec.feature_key.as_str(), rec.user_id.as_str()),
                    (feature, user)
                );
                let wrapped = format!("{{{}:{body}}}", serde_json::to_string(key).expect("key"));
                assert_eq!(parse(&wrapped), rec);
            }
            // One id in the record settles an ambiguous key.
            let rec = FeatureRecord::from_keyed_json(
                "new_checkout_user_9",
                r#"{"featureKey":"new_checkout","rolloutId":1}"#,
            )
            .expect("feature key given");
            assert_eq!(rec.user_id, "user_9");
            let rec =
                FeatureRecord::from_keyed_json("new_checkout_user_9", r#"{"userId":"user_9"}"#)
                    .expect("user id given");
            assert_eq!(rec.feature_key, "new_checkout");
            for (key, body) in [
                ("new_checkout_user_9", "{}"),
                ("nosep", "{}"),
                ("f_", "{}"),
                ("a:b:c", "{}"),
                ("f_u", r#"{"featureKey":"g","userId":"u"}"#),
                ("f_u", r#"{"featureKey":"g"}"#),
            ] {
                assert!(
                    matches!(
                        FeatureRecord::from_keyed_json(key, body),
                        Err(Error::Json { .. })
                    ),
                    "{key} {body}"
                );
            }
        }

        #[test]
        fn bad_records_are_typed_errors() {
            for json in [
                "",
                "[]",
                r#"{"userId":"u"}"#,
                r#"{"featureKey":"f"}"#,
                r#"{"featureKey":null,"userId":"u"}"#,
                r#"{"featureKey":"f","userId":7}"#,
                r#"{"featureKey":"f","userId":"u","rolloutId":true}"#,
                r#"{"featureKey":"f","userId":"u","rolloutId":{}}"#,
                r#"{"featureKey":"f","userId":"u","rolloutKey":1}"#,
                r#"{"featureKey":"f","userId":"u","isInHoldoutId":1}"#,
                r#"{"featureKey":"f","userId":"u","isInHoldoutId":[null]}"#,
                r#"{"featureKey":"f","userId":"u","user":"v"}"#,
                r#"{"featureKey":"f","userId":"u","x":1,"x":2}"#,
                r#"{"featureKey":"f","userId":"u"} trailing"#,
            ] {
                assert!(
                    matches!(FeatureRecord::from_json(json), Err(Error::Json { .. })),
                    "{json}"
                );
            }
            for json in [
                r#"{"featureKey":"","userId":"u"}"#,
                r#"{"featureKey":"f","userId":""}"#,
            ] {
                assert!(
                    matches!(
                        FeatureRecord::from_json(json),
                        Err(Error::InvalidKey { .. })
                    ),
                    "{json}"
                );
            }
        }
    }
}
