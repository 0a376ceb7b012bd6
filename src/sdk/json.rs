//! The SDKs' user storage data as JSON, in and out of a store.
//!
//! Import reads JSON Lines (one object per line) or one JSON array of objects, in every dialect the SDKs write:
//! camelCase (`userId`, `campaignKey`, `variationName`, `goalIdentifier`), Python's `goalIdentifiers`, Ruby's
//! snake_case, goal lists as a string or an array of strings, and a `metaData` value, which is kept as JSON text
//! byte for byte (see [`Store::set_with_meta`]). Unknown keys are ignored. Export writes camelCase JSON Lines
//! (with `metaData` as JSON when present) that import reads back to the same mappings and metadata.
//!
//! The FME SDKs' records ([`FeatureRecord`]) travel the same way: a line whose top level has `featureKey` is an
//! FME record (read by [`FeatureRecord::from_json`]), and so is an object keyed by the storage keys of the SDKs'
//! example connectors (`featureKey_userId`, `featureKey:userId`). Export writes them among the mappings, one
//! [`FeatureRecord::to_json`] a line, every member byte for byte.

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use serde::de;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::engine::Batch;
use crate::model::{CampaignUserMap, FeatureRecord, FmeField, read_record};
use crate::store::{AnyRecord, Store};
use crate::{Error, Result};

/// What an import does with a record it cannot read or store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop at the first bad record; the records before it are stored, none after it (the default).
    #[default]
    Abort,
    /// Leave bad records out, count them, and go on.
    Skip,
}

/// How [`Store::import_json`] runs. Build with [`ImportOptions::default`] and the builder methods.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ImportOptions {
    /// What a bad record does.
    pub on_error: OnError,
    /// Mappings written per [`Batch`] (one lock of the log, one fsync in `Immediate` mode).
    pub batch_size: usize,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            on_error: OnError::Abort,
            batch_size: 8192,
        }
    }
}

impl ImportOptions {
    /// Sets what a bad record does (default [`OnError::Abort`]).
    pub fn on_error(mut self, on_error: OnError) -> ImportOptions {
        self.on_error = on_error;
        self
    }

    /// Sets the number of mappings written per batch (default 8192; at least 1).
    pub fn batch_size(mut self, batch_size: usize) -> ImportOptions {
        self.batch_size = batch_size.max(1);
        self
    }
}

/// Where a record is in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Line number (from 1) in JSON Lines.
    Line(u64),
    /// Element number (from 1) in a JSON array, and the line it starts on.
    Element {
        /// The element's number, from 1.
        index: u64,
        /// The line (from 1) where it starts.
        line: u64,
    },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Element { index, line } => write!(f, "array element {index} (line {line})"),
        }
    }
}

/// A record that import skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedRecord {
    /// Where it is.
    pub position: Position,
    /// Why it was skipped.
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Records read (blank lines are not records).
    pub records: u64,
    /// Records stored: campaign mappings and FME records.
    pub imported: u64,
    /// How many of them were FME records.
    pub features: u64,
    /// Records left out ([`OnError::Skip`]).
    pub skipped: u64,
    /// The first [`MAX_REPORTED_SKIPS`] skipped records, with the reason.
    pub skips: Vec<SkippedRecord>,
}

/// How many skipped records an [`ImportReport`] lists one by one (all are counted).
pub const MAX_REPORTED_SKIPS: usize = 100;

/// One record of any SDK's dialect with its `metaData` (borrowed from the input), read by
/// [`crate::model::read_record`], as [`CampaignUserMap`]'s own JSON form is.
struct SdkRecord<'a> {
    map: CampaignUserMap,
    meta_data: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Deserialize<'de> for SdkRecord<'a> {
    fn deserialize<D: de::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor(std::marker::PhantomData))
    }
}

struct RecordVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> de::Visitor<'de> for RecordVisitor<'a> {
    type Value = SdkRecord<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with userId, campaignKey and variationName")
    }

    fn visit_map<A: de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut meta_data = None;
        let map = read_record(&mut map, |map| {
            meta_data = Some(map.next_value::<&'de RawValue>()?);
            Ok(())
        })?;
        Ok(SdkRecord {
            map,
            meta_data: meta_data.filter(|raw| raw.get() != "null"),
        })
    }
}

impl<'a> SdkRecord<'a> {
    fn into_parts(self) -> (CampaignUserMap, Option<&'a RawValue>) {
        (self.map, self.meta_data)
    }
}

/// Parses one record of user storage JSON in any SDK's dialect: the mapping and its `metaData` as JSON text.
///
/// ```
/// let (map, meta) = ussdb::parse_json_record(
///     r#"{"user_id":"u1","campaign_key":"c","variation_name":"Control","goal_identifiers":["a","b"],"metaData":{"k":1}}"#,
/// )?;
/// assert_eq!(map.goal_identifier.as_deref(), Some("a_vwo_b"));
/// assert_eq!(meta.as_deref(), Some(r#"{"k":1}"#));
/// # Ok::<(), ussdb::Error>(())
/// ```
pub fn parse_json_record(json: &str) -> Result<(CampaignUserMap, Option<String>)> {
    let record: SdkRecord<'_> =
        serde_json::from_str(json).map_err(|source| json_error(1, 1, source))?;
    let (map, meta) = record.into_parts();
    Ok((map, meta.map(|m| m.get().to_owned())))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRecord<'a> {
    user_id: &'a str,
    campaign_key: &'a str,
    variation_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    goal_identifier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta_data: Option<Meta<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Meta<'a> {
    /// Metadata that is JSON, written as it is.
    Json(&'a RawValue),
    /// Metadata stored through the library that is not JSON: written as a string, so nothing is lost.
    Text(&'a str),
}

/// The camelCase JSON object of one mapping, as export writes it (without the newline); `meta_data` is written
/// as JSON when it is (a string otherwise).
///
/// ```
/// let map = ussdb::CampaignUserMap::new("u1", "c", "Control");
/// assert_eq!(
///     ussdb::to_json_record(&map, Some(r#"{"k":1}"#)),
///     r#"{"userId":"u1","campaignKey":"c","variationName":"Control","metaData":{"k":1}}"#
/// );
/// ```
pub fn to_json_record(map: &CampaignUserMap, meta_data: Option<&str>) -> String {
    let mut out = Vec::new();
    // Writing to a Vec fails only on out-of-memory, and the value has nothing serde_json could refuse.
    let _ = write_record(&mut out, map, meta_data);
    String::from_utf8(out).unwrap_or_default()
}

fn write_record(
    out: &mut impl Write,
    map: &CampaignUserMap,
    meta_data: Option<&str>,
) -> serde_json::Result<()> {
    let meta = meta_data.map(|text| match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => Meta::Json(raw),
        Err(_) => Meta::Text(text),
    });
    serde_json::to_writer(
        out,
        &ExportRecord {
            user_id: &map.user_id,
            campaign_key: &map.campaign_key,
            variation_name: &map.variation_name,
            goal_identifier: map.goal_identifier.as_deref(),
            meta_data: meta,
        },
    )
}

/// The batched writer behind an import.
struct Importer<'s> {
    store: &'s Store,
    options: ImportOptions,
    batch: Batch,
    /// FME records in `batch`, counted into the report when it is written.
    pending_features: u64,
    report: ImportReport,
}

/// One input record, read.
enum Parsed<'a> {
    /// A campaign mapping and its `metaData`.
    Mapping(CampaignUserMap, Option<&'a RawValue>),
    /// FME records: one, or several from an object keyed by storage keys.
    Features(Vec<FeatureRecord>),
}

/// The top-level member names of a JSON object, values skipped.
struct TopKeys(Vec<String>);

impl<'de> Deserialize<'de> for TopKeys {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<TopKeys, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = TopKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<TopKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(TopKeys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// True when `text` may name an FME feature key member: every accepted spelling (`featureKey`, `feature_key`,
/// `FeatureKey`) contains `eature`. A cheap test that keeps the parse of campaign records as fast as before; the
/// member is then looked for at the top level.
fn mentions_feature_key(text: &[u8]) -> bool {
    text.windows(6).any(|w| w == b"eature")
}

fn utf8(text: &[u8], line: u64, column: u64) -> Result<&str> {
    std::str::from_utf8(text).map_err(|e| {
        json_error(
            line,
            column,
            <serde_json::Error as de::Error>::custom(format!("not UTF-8: {e}")),
        )
    })
}

/// Reads one record of either kind: an FME record when its top level has `featureKey` (in any of its accepted
/// spellings), a campaign mapping otherwise, and, failing that, an object keyed by the storage keys of the FME
/// SDKs' example connectors (`featureKey_userId` or `featureKey:userId`) whose members are FME records.
/// `line` and `column` place the record's text in the input, for error messages.
fn parse_any(text: &[u8], line: u64, column: u64) -> Result<Parsed<'_>> {
    if mentions_feature_key(text) {
        let json = utf8(text, line, column)?;
        // The common case first: an FME record. When it does not read as one, its error counts only if the
        // top level names a feature key (else this is a campaign record that mentions one deeper down).
        let fme_error = match FeatureRecord::from_json(json) {
            Ok(rec) => return Ok(Parsed::Features(vec![rec])),
            Err(e) => e,
        };
        let top = serde_json::from_str::<TopKeys>(json).map_err(|e| json_error(line, column, e))?;
        if top
            .0
            .iter()
            .any(|k| FmeField::from_key(k) == Some(FmeField::FeatureKey))
        {
            return Err(fme_error);
        }
    }
    match serde_json::from_slice::<SdkRecord<'_>>(text) {
        Ok(record) => {
            let (map, meta) = record.into_parts();
            Ok(Parsed::Mapping(map, meta))
        }
        Err(campaign_error) => {
            let json = utf8(text, line, column)?;
            match FeatureRecord::keyed_records(json) {
                Some(records) => records.map(Parsed::Features),
                None => Err(json_error(line, column, campaign_error)),
            }
        }
    }
}

impl Importer<'_> {
    /// Takes one parsed record (or the records of one keyed FME object), or the error that reading it gave.
    fn take(&mut self, position: Position, parsed: Result<Parsed<'_>>) -> Result<()> {
        self.report.records += 1;
        let pushed = parsed.and_then(|parsed| match parsed {
            Parsed::Mapping(map, meta) => self.batch.push(&map, meta.map(RawValue::get)),
            Parsed::Features(records) => {
                for rec in &records {
                    self.batch.push_feature(rec)?;
                    self.pending_features += 1;
                }
                Ok(())
            }
        });
        match pushed {
            Ok(()) if self.batch.len() >= self.options.batch_size => self.flush(position),
            Ok(()) => Ok(()),
            Err(e) => self.bad(position, e),
        }
    }

    fn bad(&mut self, position: Position, error: Error) -> Result<()> {
        match self.options.on_error {
            OnError::Skip => {
                self.report.skipped += 1;
                if self.report.skips.len() < MAX_REPORTED_SKIPS {
                    self.report.skips.push(SkippedRecord {
                        position,
                        reason: error.to_string(),
                    });
                }
                Ok(())
            }
            OnError::Abort => {
                // Everything before the bad record is stored, so the import can be resumed right after it.
                self.flush(position)?;
                Err(Error::Import {
                    at: position.to_string(),
                    imported: self.report.imported,
                    source: Box::new(error),
                })
            }
        }
    }

    fn flush(&mut self, position: Position) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.store
            .write_batch(&self.batch)
            .map_err(|e| Error::Import {
                at: format!("the batch ending at {position}"),
                imported: self.report.imported,
                source: Box::new(e),
            })?;
        self.report.imported += self.batch.len() as u64;
        self.report.features += self.pending_features;
        self.pending_features = 0;
        self.batch.clear();
        Ok(())
    }
}

/// The longest record import reads (a line, or an element of an array): far above any storable mapping (values
/// are at most 1 MiB encoded), low enough that garbage input cannot exhaust memory.
const MAX_RECORD_TEXT: usize = 64 << 20;

fn too_long() -> Error {
    Error::Json {
        context: String::new(),
        source: <serde_json::Error as de::Error>::custom(format!(
            "the record is longer than {} MiB",
            MAX_RECORD_TEXT >> 20
        )),
    }
}

/// A record's parse error, placed in the input: the record's text starts at `line`, `column` (both from 1), and
/// the parser counts from there. The record's own position (line, array element) is said by whoever reports the
/// record, so on the record's first line only the column is given.
fn json_error(line: u64, column: u64, source: serde_json::Error) -> Error {
    let (at_line, at_column) = (source.line() as u64, source.column() as u64);
    let context = match at_line {
        0 => String::new(),
        1 => format!("column {}", column + at_column.saturating_sub(1)),
        _ => format!("line {}, column {at_column}", line + at_line - 1),
    };
    Error::Json { context, source }
}

impl Store {
    /// Imports user storage JSON (JSON Lines, or one JSON array) in any SDK's dialect: camelCase, Python's
    /// `goalIdentifiers`, Ruby's snake_case, goal lists as strings or arrays, `metaData` kept as JSON text (as
    /// [`parse_json_record`] reads one record), and the FME SDKs' records (see the module docs: a top-level
    /// `featureKey`, or an object keyed by `featureKey_userId` storage keys). Records are written in batches
    /// ([`ImportOptions::batch_size`]); a later record of the same user and campaign (or feature) replaces an
    /// earlier one, as in the SDKs.
    ///
    /// A bad record (invalid JSON, a missing field, an id the store refuses) is skipped and counted with
    /// [`OnError::Skip`]; with [`OnError::Abort`] the import stops with [`Error::Import`], which names the record and
    /// says how many mappings were stored before it (all records before it, none after it). A JSON array with a
    /// syntax error stops the import either way: nothing after it can be read.
    pub fn import_json(
        &self,
        input: impl BufRead,
        options: &ImportOptions,
    ) -> Result<ImportReport> {
        self.import_json_with_progress(input, options, |_| {})
    }

    /// [`Store::import_json`], calling `progress(bytes_read)` as it goes.
    pub fn import_json_with_progress(
        &self,
        mut input: impl BufRead,
        options: &ImportOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<ImportReport> {
        let mut importer = Importer {
            store: self,
            options: options.clone(),
            batch: Batch::new(),
            pending_features: 0,
            report: ImportReport::default(),
        };
        let read_error = |e| Error::io("read import input", PathBuf::from("<input>"), e);
        // Skip a byte order mark (some Windows tools write one) and leading whitespace, to see whether this is
        // one JSON array or JSON Lines; the skipped newlines still count for line numbers.
        let mut skipped = 0u64;
        let mut newlines = 0u64;
        // The column (from 1) the first record starts at, for error positions.
        let mut column = 1u64;
        if input
            .fill_buf()
            .map_err(read_error)?
            .starts_with(b"\xEF\xBB\xBF")
        {
            input.consume(3);
            skipped += 3;
        }
        let first = loop {
            let buf = input.fill_buf().map_err(read_error)?;
            let Some(&byte) = buf.first() else {
                break None;
            };
            let blanks = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            if blanks == 0 {
                break Some(byte);
            }
            for &b in buf.iter().take(blanks) {
                if b == b'\n' {
                    newlines += 1;
                    column = 1;
                } else {
                    column += 1;
                }
            }
            input.consume(blanks);
            skipped += blanks as u64;
        };
        let last = match first {
            None => Position::Line(1),
            Some(b'[') => import_array(
                &mut importer,
                input,
                skipped,
                (newlines, column),
                &mut progress,
            )?,
            Some(_) => import_lines(
                &mut importer,
                input,
                skipped,
                (newlines, column),
                &mut progress,
            )?,
        };
        importer.flush(last)?;
        Ok(importer.report)
    }

    /// Writes every live mapping as camelCase JSON Lines (`metaData` as JSON when present), and every FME record
    /// ([`FeatureRecord::to_json`]) among them, and returns how many lines.
    /// The order is unspecified; sort the output for a stable one.
    pub fn export_json(&self, out: impl Write) -> Result<u64> {
        self.export_json_with_progress(out, |_| {})
    }

    /// [`Store::export_json`], calling `progress(mappings_written)` as it goes.
    pub fn export_json_with_progress(
        &self,
        out: impl Write,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
        let write_error = |e| Error::io("write export output", PathBuf::from("<output>"), e);
        let mut written = 0u64;
        let mut damaged: Vec<Error> = Vec::new();
        let mut skipped_count = 0u64;
        // One walk over both kinds: mappings and FME records come mixed, each FME record as one
        // `FeatureRecord::to_json` line (import tells them apart by `featureKey`).
        for entry in self.records() {
            let entry = match entry {
                Ok(entry) => entry,
                // Skipped and reported at the end: one damaged record must not stop an export.
                Err(e) if e.is_corruption() => {
                    log::warn!("export skips a damaged record: {e}");
                    skipped_count += 1;
                    if damaged.is_empty() {
                        damaged.push(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            match entry {
                AnyRecord::Mapping(map, meta) => write_record(&mut out, &map, meta.as_deref())
                    .map_err(|e| write_error(e.into()))?,
                AnyRecord::Feature(rec) => out
                    .write_all(rec.to_json().as_bytes())
                    .map_err(write_error)?,
            }
            out.write_all(b"\n").map_err(write_error)?;
            written += 1;
            if written.is_multiple_of(4096) {
                progress(written);
            }
        }
        out.flush().map_err(write_error)?;
        progress(written);
        match damaged.into_iter().next() {
            None => Ok(written),
            Some(first) => Err(Error::Export {
                written,
                skipped: skipped_count,
                first: Box::new(first),
            }),
        }
    }
}

/// Imports JSON Lines; returns the position after the last line.
/// `(lines_before, first_column)`: the lines skipped before the first record, and the column it starts at.
fn import_lines(
    importer: &mut Importer<'_>,
    mut input: impl BufRead,
    mut bytes: u64,
    (lines_before, first_column): (u64, u64),
    progress: &mut dyn FnMut(u64),
) -> Result<Position> {
    let read_error = |e| Error::io("read import input", PathBuf::from("<input>"), e);
    let mut line = Vec::new();
    let mut number = lines_before;
    let mut column = first_column;
    loop {
        line.clear();
        let n = (&mut input)
            .take(MAX_RECORD_TEXT as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(read_error)?;
        if n == 0 {
            return Ok(Position::Line(number + 1));
        }
        number += 1;
        bytes += n as u64;
        let position = Position::Line(number);
        if n > MAX_RECORD_TEXT && line.last() != Some(&b'\n') {
            // Drop the rest of the line without keeping it: a runaway line must not exhaust memory.
            loop {
                line.clear();
                let more = (&mut input)
                    .take(1 << 20)
                    .read_until(b'\n', &mut line)
                    .map_err(read_error)?;
                bytes += more as u64;
                if more == 0 || line.last() == Some(&b'\n') {
                    break;
                }
            }
            importer.take(position, Err(too_long()))?;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        importer.take(position, parse_any(&line, number, column))?;
        column = 1;
        if number.is_multiple_of(4096) {
            progress(bytes);
        }
    }
}

/// Imports one JSON array, element by element, with bounded memory: a small scanner finds where each element
/// ends (tracking nesting and strings), and each element is parsed on its own, so a bad element can be skipped
/// like a bad line. Returns the position after the last element.
fn import_array(
    importer: &mut Importer<'_>,
    mut input: impl BufRead,
    mut bytes: u64,
    (lines_before, first_column): (u64, u64),
    progress: &mut dyn FnMut(u64),
) -> Result<Position> {
    let mut element = Vec::new();
    let mut index = 0u64;
    let mut line = lines_before + 1;
    let mut element_line = line;
    // The column of the byte last looked at (from 1; the `[` is at `first_column`), and where the element began.
    let mut column = first_column - 1;
    let mut element_column = first_column;
    // Nesting depth: 0 before the opening `[`, 1 between elements, more inside one.
    let mut depth = 0usize;
    let (mut in_string, mut escaped, mut closed) = (false, false, false);
    let position = |index: u64, line: u64| Position::Element { index, line };
    loop {
        let chunk = input
            .fill_buf()
            .map_err(|e| Error::io("read import input", PathBuf::from("<input>"), e))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if in_string && !escaped {
                // Most bytes are inside strings: copy a run up to the next quote, escape or newline at once.
                let rest = chunk.get(i..).unwrap_or_default();
                let run = rest
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c == b'\n')
                    .unwrap_or(rest.len());
                if run > 0 {
                    element.extend_from_slice(rest.get(..run).unwrap_or_default());
                    i += run;
                    column += run as u64;
                    if element.len() > MAX_RECORD_TEXT {
                        return Err(array_error(
                            importer,
                            position(index + 1, element_line),
                            "an array element longer than 64 MiB",
                        ));
                    }
                    continue;
                }
            }
            i += 1;
            if b == b'\n' {
                line += 1;
                column = 0;
            } else {
                column += 1;
            }
            if closed {
                if !b.is_ascii_whitespace() {
                    return Err(array_error(
                        importer,
                        position(index + 1, line),
                        "data after the end of the JSON array",
                    ));
                }
                continue;
            }
            if in_string {
                element.push(b);
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match (depth, b) {
                (0, b'[') => depth = 1,
                (0, _) => {} // leading whitespace, already skipped by the caller
                (1, b',' | b']') => {
                    if element.iter().all(u8::is_ascii_whitespace) {
                        if b == b']' && index == 0 {
                            closed = true; // `[]`
                            continue;
                        }
                        return Err(array_error(
                            importer,
                            position(index + 1, line),
                            "empty array element",
                        ));
                    }
                    index += 1;
                    let at = position(index, element_line);
                    importer.take(at, parse_any(&element, element_line, element_column))?;
                    element.clear();
                    closed = b == b']';
                    if index.is_multiple_of(4096) {
                        progress(bytes);
                    }
                }
                (1, _) if b.is_ascii_whitespace() && element.is_empty() => {}
                (_, _) if element.len() >= MAX_RECORD_TEXT => {
                    return Err(array_error(
                        importer,
                        position(index + 1, element_line),
                        "an array element longer than 64 MiB",
                    ));
                }
                (_, _) => {
                    if element.is_empty() {
                        element_line = line;
                        element_column = column;
                    }
                    element.push(b);
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        // A mismatched bracket is left for the element's parser to name.
                        b'}' | b']' if depth > 1 => depth -= 1,
                        _ => {}
                    }
                }
            }
        }
        input.consume(n);
        bytes += n as u64;
    }
    if !closed {
        return Err(array_error(
            importer,
            position(index + 1, line),
            "the JSON array is not closed with `]`",
        ));
    }
    progress(bytes);
    Ok(position(index + 1, line))
}

/// An error in the array's own syntax: nothing after it can be read, whatever `on_error` says.
fn array_error(importer: &mut Importer<'_>, at: Position, reason: &str) -> Error {
    // `at` is given once, by the import error.
    let source = Error::Json {
        context: String::new(),
        source: <serde_json::Error as de::Error>::custom(reason),
    };
    if let Err(e) = importer.flush(at) {
        return e;
    }
    Error::Import {
        at: at.to_string(),
        imported: importer.report.imported,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quick_test_sees_every_spelling_of_the_feature_key() {
        for name in FmeField::FeatureKey.names() {
            assert!(
                mentions_feature_key(format!("{{\"{name}\":1}}").as_bytes()),
                "{name}"
            );
        }
        assert!(!mentions_feature_key(
            br#"{"userId":"u","campaignKey":"c","variationName":"v"}"#
        ));
    }
}
