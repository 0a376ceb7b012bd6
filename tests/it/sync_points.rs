//! Sync points: recovery tells damage from a torn write by what the store wrote (sync points signed with its
//! secret seed), never by what stored values look like. Values of zeros across a page boundary do not pass for
//! lost write-back, and records embedded in ids and values do not pass for intact records or sync points. Stores
//! of earlier formats open, are read in full and take writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ussdb::{CampaignUserMap, Durability, Error, Options, Store};

use crate::common::{
    copy_dir, crc32, map, memory_tempdir, open, record_extents, segment_files, tempdir,
};

/// Every durability mode. `Periodic` with an interval no test lasts, so that record offsets stay where the test
/// computes them; its thread's own sync points are covered by
/// [`an_idle_periodic_store_stops_fsyncing_once_its_sync_point_is_written`].
const MODES: [(&str, Durability); 3] = [
    ("Immediate", Durability::Immediate),
    ("Periodic", Durability::Periodic(Duration::from_secs(3600))),
    ("Never", Durability::Never),
];

fn options(durability: Durability) -> Options {
    Options::default()
        .durability(durability)
        .auto_compaction(false)
}

/// The only segment of a store that never rotated.
fn only_segment(dir: &Path) -> PathBuf {
    let files = segment_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// The file id in a segment's name.
fn file_id(segment: &Path) -> u32 {
    segment
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment file name")
}

// ---- Case 1: zeros across a page boundary, acknowledged writes after them, one flipped bit ----

/// Zeros in the value: more than a 4 KiB page, so they cover the 64 bytes before the boundary at 4096.
const ZEROS: usize = 4600;
const LATER: usize = 24;

#[test]
fn a_flipped_bit_in_a_value_of_zeros_across_a_page_boundary_is_damage_and_nothing_is_cut() {
    let mut flips = 0;
    for (mode, durability) in MODES {
        let dir = memory_tempdir();
        {
            let store = open(dir.path(), options(durability));
            store
                .set(&map("zero", "campaign", &"\0".repeat(ZEROS), None))
                .expect("set the value of zeros");
            for i in 0..LATER {
                store
                    .set(&map(
                        &format!("later-{i}"),
                        "campaign",
                        &format!("v{i}"),
                        None,
                    ))
                    .expect("an acknowledged write");
                if i == LATER / 2 {
                    // Periodic and Never make writes durable here and when the store closes.
                    store.sync().expect("sync");
                }
            }
        }
        let seg = only_segment(dir.path());
        let original = std::fs::read(&seg).expect("read");
        let records = record_extents(&original);
        let (kind, start, end) = records[0];
        assert_eq!(
            (kind, start),
            (1, 20),
            "{mode}: the value of zeros comes first"
        );
        // The layout the old rule took for lost write-back: a page that ends in 64 zeros, intact records after.
        assert!(start < 4096 - 64 && end > 4096, "{mode}: {start}..{end}");
        assert!(original[4096 - 64..4096].iter().all(|&b| b == 0), "{mode}");
        let puts_after = records.iter().filter(|r| r.0 == 1 && r.1 >= end).count();
        assert_eq!(puts_after, LATER, "{mode}");
        assert!(
            records.iter().any(|r| r.0 == 3),
            "{mode}: sync points were written"
        );

        // Every byte of the header and key, every byte near the page boundary, and every 13th elsewhere.
        let positions = (start..end)
            .filter(|&p| p < start + 64 || p.abs_diff(4096) <= 128 || p % 13 == 0 || p + 1 == end);
        for p in positions {
            let mut bytes = original.clone();
            bytes[p] ^= 1 << (p % 8);
            std::fs::write(&seg, &bytes).expect("damage");
            let context = format!("{mode}: bit {} of byte {p} flipped", p % 8);
            match Store::open_with(dir.path(), options(durability)) {
                Err(Error::Corrupted {
                    path,
                    offset,
                    reason,
                }) => {
                    assert_eq!(path, seg, "{context}");
                    assert_eq!(offset, start as u64, "{context}: {reason}");
                    assert!(reason.contains("sync point"), "{context}: {reason}");
                }
                Err(e) => panic!("{context}: {e:?}"),
                Ok(store) => panic!(
                    "{context}: opened with {} mappings; the later writes were cut off",
                    store.stats().mappings
                ),
            }
            assert_eq!(
                std::fs::read(&seg).expect("read"),
                bytes,
                "{context}: a failed open cuts nothing"
            );
            flips += 1;
            if p == start + 40 {
                // verify_dir agrees: damage, not a torn tail.
                let report = ussdb::verify_dir(dir.path()).expect("verify_dir");
                assert!(
                    !report.is_clean() && report.torn_tail.is_none(),
                    "{context}: {report:?}"
                );
            }
        }
        std::fs::write(&seg, &original).expect("undo");
        let store = open(dir.path(), options(durability));
        assert_eq!(store.stats().mappings, LATER as u64 + 1, "{mode}");
    }
    eprintln!(
        "sync points, case 1: {flips} flipped bits in values of zeros, each reported as damage"
    );
}

// ---- Case 2: a torn last record whose id or value embeds whole records and a forged sync point ----

/// An ASCII (so UTF-8) stretch of text that, once stored at file offset `base`, holds: a put record that passes
/// its checksum, a tombstone that passes its checksum of one of the `victims` (user ids of mappings of campaign
/// `campaign`), and a sync point of segment `file_id` at its own offset claiming everything before it durable,
/// intact but for its MAC.
fn forgeries(base: usize, file_id: u32, victims: &[String]) -> String {
    let mut out: Vec<u8> = b"<".to_vec();
    let put = (0..100_000)
        .find_map(|n: u32| {
            let text = format!("Fake-{n}");
            let mut value = vec![u8::try_from(text.len()).expect("short")];
            value.extend_from_slice(text.as_bytes());
            value.extend_from_slice(&[0, 0]);
            let mut key = vec![4u8, 0];
            key.extend_from_slice(b"fakecamp");
            ascii_record(1, &key, &value)
        })
        .expect("a put whose checksum is ASCII");
    out.extend_from_slice(&put);
    // A tombstone's bytes are fixed by its key: take the first victim whose checksum comes out ASCII.
    let delete = victims
        .iter()
        .find_map(|victim| {
            let mut key = vec![u8::try_from(victim.len()).expect("short id"), 0];
            key.extend_from_slice(victim.as_bytes());
            key.extend_from_slice(b"campaign");
            ascii_record(2, &key, &[])
        })
        .expect("a tombstone whose checksum is ASCII");
    out.extend_from_slice(&delete);
    // Pad until the sync point's offset is ASCII in every byte, then forge it.
    while !(base + out.len()).to_le_bytes().iter().all(|&b| b < 0x80) {
        out.push(b'.');
    }
    let at = (base + out.len()) as u64;
    let sync = (0..100_000)
        .find_map(|n: u32| {
            let mut payload = Vec::new();
            payload.extend_from_slice(&file_id.to_le_bytes());
            payload.extend_from_slice(&at.to_le_bytes());
            payload.extend_from_slice(&at.to_le_bytes());
            payload.extend_from_slice(format!("MAC{n:05}").as_bytes());
            ascii_record(3, &[], &payload)
        })
        .expect("a sync point whose checksum is ASCII");
    out.extend_from_slice(&sync);
    out.push(b'>');
    String::from_utf8(out).expect("ASCII throughout")
}

/// The record (kind, key, value) if all of its bytes, checksum included, are ASCII.
fn ascii_record(kind: u8, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let mut rec = vec![0u8; 4];
    rec.push(kind);
    rec.extend_from_slice(&u16::try_from(key.len()).expect("key").to_le_bytes());
    rec.extend_from_slice(&u32::try_from(value.len()).expect("value").to_le_bytes());
    rec.extend_from_slice(key);
    rec.extend_from_slice(value);
    let crc = crc32(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    rec.iter().all(|&b| b < 0x80).then_some(rec)
}

/// Where the forgeries go in the last record.
#[derive(Clone, Copy, Debug)]
enum Layout {
    UserId,
    CampaignKey,
    Variation,
}

const KEPT: usize = 40;

#[test]
fn a_torn_last_record_embedding_records_and_a_forged_sync_point_is_cut_at_every_byte() {
    let (mut layouts, mut cuts) = (0, 0);
    for (mode, durability) in MODES {
        for layout in [Layout::UserId, Layout::CampaignKey, Layout::Variation] {
            let context = format!("{mode}, forgeries in the {layout:?}");
            let dir = memory_tempdir();
            let kept: Vec<CampaignUserMap> = (0..KEPT)
                .map(|i| map(&format!("kept-{i}"), "campaign", &format!("v{i}"), None))
                .collect();
            let (start, last) = {
                let store = open(dir.path(), options(durability));
                for m in &kept {
                    store.set(m).expect("set");
                }
                let seg = only_segment(dir.path());
                let start = std::fs::metadata(&seg).expect("len").len() as usize;
                let id = file_id(&seg);
                let victims: Vec<String> = kept.iter().map(|m| m.user_id.clone()).collect();
                let last = match layout {
                    // Record header 11, user id length 2, then "u".
                    Layout::UserId => {
                        let user = format!("u{}", forgeries(start + 14, id, &victims));
                        map(&user, "campaign", "v", None)
                    }
                    // After the user id "last".
                    Layout::CampaignKey => {
                        let campaign = format!("c{}", forgeries(start + 18, id, &victims));
                        map("last", &campaign, "v", None)
                    }
                    // After the key (2 + "last" + "c"), a 3-byte length (the variation is 251 bytes or more), "v".
                    Layout::Variation => {
                        let mut variation = format!("v{}", forgeries(start + 22, id, &victims));
                        while variation.len() < 300 {
                            variation.push('z');
                        }
                        map("last", "c", &variation, None)
                    }
                };
                store.set(&last).expect("the last write");
                (start, last)
            };
            let seg = only_segment(dir.path());
            let original = std::fs::read(&seg).expect("read");
            let records = record_extents(&original);
            let &(kind, at, end) = records
                .iter()
                .find(|r| r.1 == start)
                .unwrap_or_else(|| panic!("{context}: no record at {start}: {records:?}"));
            assert_eq!(kind, 1, "{context}");
            // The forgeries are really there: records that pass their checksums inside the last one, among them
            // a sync point naming this file and its own offset.
            let embedded: Vec<(usize, u8)> = (at + 1..end)
                .filter_map(|p| {
                    let h = original.get(p..p + 11)?;
                    let len = 11
                        + usize::from(u16::from_le_bytes([h[5], h[6]]))
                        + u32::from_le_bytes([h[7], h[8], h[9], h[10]]) as usize;
                    let rec = original.get(p..p + len)?;
                    (p + len <= end
                        && u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) == crc32(&rec[4..]))
                    .then_some((p, h[4]))
                })
                .collect();
            assert!(
                embedded.iter().any(|e| e.1 == 1) && embedded.iter().any(|e| e.1 == 2),
                "{context}: {embedded:?}"
            );
            let (sync_at, _) = *embedded
                .iter()
                .find(|e| e.1 == 3)
                .unwrap_or_else(|| panic!("{context}: no forged sync point"));
            assert_eq!(
                original[sync_at + 15..sync_at + 23],
                (sync_at as u64).to_le_bytes(),
                "{context}: the forged sync point names its own offset"
            );
            layouts += 1;

            for cut in at..=end {
                let what = format!("{context}, cut at {cut} (record {at}..{end})");
                std::fs::write(&seg, &original[..cut]).expect("tear");
                let store = Store::open_with(dir.path(), options(durability))
                    .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
                for m in &kept {
                    assert_eq!(
                        store.get(&m.user_id, "campaign").expect("get").as_ref(),
                        Some(m),
                        "{what}"
                    );
                }
                assert_eq!(store.get("fake", "camp").expect("get"), None, "{what}");
                let whole = cut == end;
                assert_eq!(
                    store
                        .get(&last.user_id, &last.campaign_key)
                        .expect("get")
                        .as_ref(),
                    whole.then_some(&last),
                    "{what}"
                );
                assert_eq!(
                    store.stats().mappings,
                    KEPT as u64 + u64::from(whole),
                    "{what}"
                );
                drop(store);
                assert_eq!(
                    std::fs::metadata(&seg).expect("len").len() as usize,
                    if whole { end } else { at },
                    "{what}: cut exactly where the torn record starts"
                );
                cuts += 1;
            }
            // After the cut the store goes on: a write lands where the torn record was, and survives a reopen.
            std::fs::write(&seg, &original[..end - 1]).expect("tear");
            {
                let store = open(dir.path(), options(durability));
                store
                    .set(&map("after", "cut", "v", None))
                    .expect("write after recovery");
            }
            let store = open(dir.path(), options(durability));
            assert!(
                store.get("after", "cut").expect("get").is_some(),
                "{context}"
            );
            assert_eq!(store.stats().mappings, KEPT as u64 + 1, "{context}");
        }
    }
    eprintln!(
        "sync points, case 2: {layouts} layouts of embedded records and forged sync points, {cuts} torn \
         lengths, each cut back to the records before"
    );
}

// ---- The sync points themselves ----

#[test]
fn sync_points_follow_fsyncs_are_dead_weight_and_compaction_drops_them() {
    let dir = tempdir();
    let store = open(
        dir.path(),
        options(Durability::Immediate).segment_size(4096),
    );
    for i in 0..120 {
        store
            .set(&map(&format!("user-{i}"), "campaign", "variation", None))
            .expect("set");
    }
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        report.records, 120,
        "sync points are not counted as records"
    );
    assert_eq!(report.mappings, 120);
    // One after each fsync, but none in a segment it would overfill.
    assert!(report.sync_points >= 100, "{report:?}");
    let dead = store.stats().dead_bytes;
    assert_eq!(
        dead,
        report.sync_points * 39,
        "sync points are dead from birth"
    );
    let before = report.sync_points;
    store.compact().expect("compact");
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
    // The compacted segments lost theirs; the active segment keeps its own (it is not sealed for them alone).
    assert_eq!(report.records, 120, "{report:?}");
    assert!(report.sync_points < before / 2, "{report:?}");
    assert_eq!(store.stats().dead_bytes, report.sync_points * 39);
    for i in 0..10 {
        store
            .set(&map(&format!("new-{i}"), "campaign", "variation", None))
            .expect("set");
    }
    drop(store);
    // Reopened, replay counts them dead as the writer did.
    let store = open(
        dir.path(),
        options(Durability::Immediate).segment_size(4096),
    );
    let report = store.verify().expect("verify");
    assert!(report.sync_points >= 10, "{report:?}");
    assert_eq!(
        report.sync_points * 39,
        store.stats().dead_bytes,
        "{report:?}"
    );
}

#[test]
fn hint_files_list_sync_points_and_open_replays_them() {
    // Background compaction writes hints for sealed segments below its threshold: those keep their sync points.
    let dir = tempdir();
    let opts = || {
        Options::default()
            .durability(Durability::Immediate)
            .segment_size(4096)
            .compaction_threshold(0.95)
    };
    let store = open(dir.path(), opts());
    for i in 0..400 {
        store
            .set(&map(
                &format!("user-{i}"),
                "campaign",
                &format!("v{i}"),
                None,
            ))
            .expect("set");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.stats().hint_files < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no hint files written: {:?}",
            store.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let hinted = store.stats().hint_files;
    drop(store);
    // Every hint written covers a segment with sync points in it.
    for hint in std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hint"))
    {
        let bytes = std::fs::read(&hint).expect("hint");
        let kinds: Vec<u8> = bytes[48..].chunks_exact(13).map(|e| e[0]).collect();
        assert!(kinds.contains(&3), "{}: {kinds:?}", hint.display());
        assert!(
            bytes[48..]
                .chunks_exact(13)
                .filter(|e| e[0] == 3)
                .all(|e| e[1..5] == 39u32.to_le_bytes() && e[5..] == [0; 8]),
            "{}",
            hint.display()
        );
    }
    let store = open(dir.path(), opts().auto_compaction(false));
    assert!(store.stats().hint_files >= hinted);
    for i in 0..400 {
        assert_eq!(
            store
                .get(&format!("user-{i}"), "campaign")
                .expect("get")
                .map(|m| m.variation_name),
            Some(format!("v{i}"))
        );
    }
    let report = store.verify().expect("verify");
    assert!(
        report.is_clean() && report.hint_problems.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.sync_points * 39, store.stats().dead_bytes);
}

#[test]
fn an_idle_periodic_store_stops_fsyncing_once_its_sync_point_is_written() {
    // The sync point after an fsync is itself unsynced; if it counted as a write to make durable, the periodic
    // thread would fsync an idle store forever.
    let dir = tempdir();
    let store = open(
        dir.path(),
        options(Durability::Periodic(Duration::from_millis(5))),
    );
    store.set(&map("u", "c", "v", None)).expect("set");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.stats().fsyncs == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the periodic thread never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let after_first = store.stats().fsyncs;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        store.stats().fsyncs,
        after_first,
        "an idle store fsyncs again"
    );
    let report = store.verify().expect("verify");
    assert_eq!(report.sync_points, 1, "{report:?}");
}

// ---- Stores of earlier formats ----

type Model = BTreeMap<(String, String), (CampaignUserMap, Option<String>)>;

/// What `tests/fixtures/*-store` hold: the steps in tests/fixtures/README.md, replayed.
fn fixture_model() -> Model {
    let mut model = Model::new();
    let set = |model: &mut Model, i: usize| {
        let map = CampaignUserMap {
            user_id: format!("user-{}", i % 7),
            campaign_key: format!("campaign-{}", i % 5),
            variation_name: format!("variation-{i}"),
            goal_identifier: i
                .is_multiple_of(2)
                .then(|| format!("goal-{i}_vwo_").repeat(i % 4 + 1)),
        };
        let meta = (i % 10 == 7).then(|| format!("{{\"n\":{i}}}"));
        model.insert((map.user_id.clone(), map.campaign_key.clone()), (map, meta));
    };
    for i in 0..60 {
        set(&mut model, i);
    }
    model.remove(&("user-1".into(), "campaign-1".into()));
    model.remove(&("user-2".into(), "campaign-3".into()));
    model.retain(|(user, _), _| user != "user-6");
    for i in 60..140 {
        set(&mut model, i);
    }
    model.remove(&("user-0".into(), "campaign-4".into()));
    model
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check_model(store: &Store, model: &Model, what: &str) {
    for u in 0..7 {
        let user = format!("user-{u}");
        for c in 0..5 {
            let campaign = format!("campaign-{c}");
            let want = model.get(&(user.clone(), campaign.clone()));
            let got = store.get_with_meta(&user, &campaign).expect("get");
            assert_eq!(got.as_ref(), want, "{what}: ({user}, {campaign})");
        }
    }
    assert_eq!(store.stats().mappings, model.len() as u64, "{what}");
}

/// The format version in a segment file's header.
fn version(segment: &Path) -> u32 {
    let bytes = std::fs::read(segment).expect("read segment");
    u32::from_le_bytes(bytes[8..12].try_into().expect("a header"))
}

#[test]
fn stores_of_formats_1_and_2_open_read_everything_take_writes_and_reopen() {
    for (name, old) in [("v1-store", 1), ("v2-store", 2)] {
        let copy = copy_dir(&fixture(name));
        let before = segment_files(copy.path());
        assert!(before.iter().all(|s| version(s) == old), "{name}");
        let report = ussdb::verify_dir(copy.path()).expect("verify_dir");
        assert!(report.is_clean(), "{name}: {report:?}");
        assert_eq!(report.sync_points, 0, "{name}");

        let mut model = fixture_model();
        let opts = || Options::default().segment_size(4096).auto_compaction(false);
        let store = open(copy.path(), opts());
        check_model(&store, &model, name);
        // The newest segment of the old format was sealed; writes go to a new one, which has sync points.
        let after = segment_files(copy.path());
        assert_eq!(after.len(), before.len() + 1, "{name}: {after:?}");
        let newest = after.last().expect("segments");
        assert!(!before.contains(newest), "{name}");
        assert_eq!(version(newest), 3, "{name}");
        for i in 0..30 {
            let m = map(
                &format!("user-{}", i % 7),
                &format!("campaign-{}", i % 5),
                &format!("new-{i}"),
                None,
            );
            store.set(&m).expect("set");
            model.insert((m.user_id.clone(), m.campaign_key.clone()), (m, None));
        }
        assert!(store.delete("user-3", "campaign-3").expect("delete"));
        model.remove(&("user-3".into(), "campaign-3".into()));
        check_model(&store, &model, &format!("{name}, written"));
        drop(store);
        let written = segment_files(copy.path());

        let store = open(copy.path(), opts());
        check_model(&store, &model, &format!("{name}, reopened"));
        let report = store.verify().expect("verify");
        assert!(report.is_clean(), "{name}: {report:?}");
        assert!(report.sync_points > 0, "{name}: {report:?}");
        // Sealing happens once: the newest segment is of this format now.
        assert_eq!(segment_files(copy.path()), written, "{name}");
        store.compact().expect("compact");
        check_model(&store, &model, &format!("{name}, compacted"));
        drop(store);
        let store = open(copy.path(), Options::default());
        check_model(&store, &model, &format!("{name}, default options"));
    }
}

#[test]
fn a_store_of_format_1_opened_read_only_is_read_and_left_as_it_was() {
    for name in ["v1-store", "v2-store"] {
        let copy = copy_dir(&fixture(name));
        let snapshot = || {
            let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(copy.path())
                .expect("list")
                .map(|e| e.expect("entry").path())
                .map(|p| {
                    let bytes = std::fs::read(&p).expect("read");
                    (p, bytes)
                })
                .collect();
            files.sort();
            files
        };
        let before = snapshot();
        let store = open(copy.path(), Options::default().read_only(true));
        check_model(&store, &fixture_model(), name);
        drop(store);
        assert!(
            before == snapshot(),
            "{name}: a reader changed the directory"
        );
    }
}
