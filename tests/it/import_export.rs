//! Import and export in the SDKs' JSON: every dialect is read, bad records are named by line, and export then
//! import reproduces a store exactly; write batches keep last-write-wins.

use std::collections::BTreeSet;

use ussdb::{Batch, CampaignUserMap, Error, ImportOptions, OnError, Position, Store};

use crate::common::{map, open, small_segments, tempdir};

/// A mapping as (user, campaign, variation, goals, meta).
type Row = (String, String, String, Option<String>, Option<String>);

/// Every live mapping, sorted.
fn contents(store: &Store) -> BTreeSet<Row> {
    store
        .entries()
        .map(|e| {
            let (m, meta) = e.expect("entry");
            (
                m.user_id,
                m.campaign_key,
                m.variation_name,
                m.goal_identifier,
                meta,
            )
        })
        .collect()
}

fn import(
    store: &Store,
    input: &str,
    options: &ImportOptions,
) -> ussdb::Result<ussdb::ImportReport> {
    store.import_json(input.as_bytes(), options)
}

#[test]
fn export_then_import_reproduces_mappings_metadata_and_odd_goal_strings() {
    let (a, b) = (tempdir(), tempdir());
    let source = open(a.path(), small_segments());
    let goals = [
        None,
        Some(""),
        Some("_vwo_leading"),
        Some("trailing_vwo_"),
        Some("a_vwo_b_vwo_ü \"quoted\"\nnew line\t\u{1}"),
        Some("_vwo__vwo_"),
    ];
    let metas = [
        None,
        Some(r#"{"k": [1, 2.50, "x"],  "nested":{"é":null}}"#),
        Some("[]"),
        Some("\"just a string\""),
        Some("42"),
    ];
    for i in 0..300usize {
        let m = map(
            &format!("user-{}", i % 97),
            &format!("camp\"aign-{}", i % 7),
            &format!("Variation-{i}"),
            goals[i % goals.len()],
        );
        source
            .set_with_meta(&m, metas[i % metas.len()])
            .expect("set");
    }
    source.delete("user-1", "camp\"aign-1").expect("delete");
    let mut exported = Vec::new();
    let written = source.export_json(&mut exported).expect("export");
    assert_eq!(written, source.stats().mappings);
    let text = String::from_utf8(exported).expect("utf-8");
    assert_eq!(text.lines().count() as u64, written);
    assert!(
        text.lines().all(|l| l.starts_with(r#"{"userId":"#)),
        "camelCase keys first"
    );
    assert!(
        text.contains(r#""metaData":{"k": [1, 2.50, "x"],  "nested":{"é":null}}"#),
        "metaData as JSON, byte for byte"
    );

    let target = open(b.path(), small_segments());
    let report = import(&target, &text, &ImportOptions::default().batch_size(7)).expect("import");
    assert_eq!(
        (report.records, report.imported, report.skipped),
        (written, written, 0)
    );
    assert_eq!(contents(&target), contents(&source));

    // And the second export is the first one, line for line.
    let mut again = Vec::new();
    target.export_json(&mut again).expect("export again");
    let sorted = |t: &str| t.lines().map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(
        sorted(&String::from_utf8(again).expect("utf-8")),
        sorted(&text)
    );
}

#[test]
fn import_reads_every_sdk_key_style() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let input = concat!(
        r#"{"userId":"js","campaignKey":"c","variationName":"V","goalIdentifier":"a_vwo_b"}"#,
        "\n",
        r#"{"userId":"py","campaignKey":"c","variationName":"V","goalIdentifiers":"_vwo_a"}"#,
        "\n",
        r#"{"user_id":"rb","campaign_key":"c","variation_name":"V","goal_identifier":"b_vwo_"}"#,
        "\n",
        r#"{"userId":"node","campaignKey":"c","variationName":"V","metaData":{"plan":"pro"},"extra":1}"#,
        "\n",
        r#"{"userId":"list","campaignKey":"c","variationName":"V","goalIdentifiers":["x","y"]}"#,
        "\r\n",
        "   \n",
        r#"{"userId":"null","campaignKey":"c","variationName":"V","goalIdentifier":null,"metaData":null}"#,
    );
    let report = import(&store, input, &ImportOptions::default()).expect("import");
    assert_eq!((report.records, report.imported), (6, 6));
    let got = |u: &str| store.get_with_meta(u, "c").expect("get").expect("present");
    assert_eq!(got("js").0.goal_identifier.as_deref(), Some("a_vwo_b"));
    assert_eq!(got("py").0.goal_identifier.as_deref(), Some("_vwo_a"));
    assert_eq!(got("rb").0, map("rb", "c", "V", Some("b_vwo_")));
    assert_eq!(got("node").1.as_deref(), Some(r#"{"plan":"pro"}"#));
    assert_eq!(got("list").0.goal_identifier.as_deref(), Some("x_vwo_y"));
    assert_eq!(got("null"), (map("null", "c", "V", None), None));
}

#[test]
fn import_reads_a_json_array() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let input = r#"
      [ {"userId":"a","campaignKey":"c","variationName":"V1"},
        {"user_id":"b","campaign_key":"c","variation_name":"V2","metaData":{"n":[1]}} ]
    "#;
    let report = import(&store, input, &ImportOptions::default()).expect("import");
    assert_eq!(report.imported, 2);
    assert_eq!(
        store.get_with_meta("b", "c").expect("get"),
        Some((map("b", "c", "V2", None), Some(r#"{"n":[1]}"#.to_owned())))
    );
}

#[test]
fn a_bad_line_aborts_naming_its_line_and_keeps_exactly_the_lines_before() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let input = concat!(
        r#"{"userId":"u1","campaignKey":"c","variationName":"V"}"#,
        "\n",
        r#"{"userId":"u2","campaignKey":"c","variationName":"V"}"#,
        "\n",
        r#"{"userId":"u3","campaignKey":"c"}"#,
        "\n",
        r#"{"userId":"u4","campaignKey":"c","variationName":"V"}"#,
        "\n",
    );
    let err = import(&store, input, &ImportOptions::default().batch_size(1000))
        .expect_err("line 3 is bad");
    match &err {
        Error::Import {
            at,
            imported,
            source,
        } => {
            assert_eq!((at.as_str(), *imported), ("line 3", 2));
            assert!(source.to_string().contains("variationName"), "{source}");
        }
        other => panic!("expected Error::Import, got {other:?}"),
    }
    assert!(err.to_string().contains("line 3"), "{err}");
    let users: Vec<String> = contents(&store).into_iter().map(|e| e.0).collect();
    assert_eq!(users, ["u1", "u2"]);
}

#[test]
fn skip_mode_reports_each_bad_record_and_imports_the_rest() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let long = "x".repeat(ussdb::MAX_ID_LEN + 1);
    let input = format!(
        "{}\nnot json\n{{\"userId\":\"\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n{{\"userId\":\"{long}\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n\u{0}\n{}\n",
        r#"{"userId":"ok1","campaignKey":"c","variationName":"V"}"#,
        r#"{"userId":"ok2","campaignKey":"c","variationName":"V"}"#,
    );
    let options = ImportOptions::default().on_error(OnError::Skip);
    let report = import(&store, &input, &options).expect("import");
    assert_eq!((report.records, report.imported, report.skipped), (6, 2, 4));
    let lines: Vec<Position> = report.skips.iter().map(|s| s.position).collect();
    assert_eq!(
        lines,
        [
            Position::Line(2),
            Position::Line(3),
            Position::Line(4),
            Position::Line(5)
        ]
    );
    assert!(
        report.skips[1].reason.contains("must not be empty"),
        "{:?}",
        report.skips[1]
    );
    assert_eq!(store.stats().mappings, 2);
}

#[test]
fn a_broken_json_array_stops_even_in_skip_mode_and_says_where() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let input = r#"[{"userId":"a","campaignKey":"c","variationName":"V"}, {"userId":"b", oops]"#;
    let err = import(
        &store,
        input,
        &ImportOptions::default().on_error(OnError::Skip),
    )
    .expect_err("syntax");
    assert!(
        matches!(&err, Error::Import { at, imported: 1, .. } if at == "array element 2 (line 1)"),
        "{err:?}"
    );
    assert!(store.get("a", "c").expect("get").is_some());
}

#[test]
fn later_records_win_within_and_across_batches_and_survive_reopen() {
    let dir = tempdir();
    let mut input = String::new();
    for round in 0..5 {
        for u in 0..40 {
            input.push_str(&format!(
                "{{\"userId\":\"u{u}\",\"campaignKey\":\"c\",\"variationName\":\"r{round}\"}}\n"
            ));
        }
    }
    {
        let store = open(dir.path(), small_segments());
        let report =
            import(&store, &input, &ImportOptions::default().batch_size(33)).expect("import");
        assert_eq!(report.imported, 200);
        assert_eq!(store.stats().mappings, 40);
        assert!(store.stats().segments > 1, "the import spans segments");
        assert_eq!(
            store
                .get("u7", "c")
                .expect("get")
                .expect("set")
                .variation_name,
            "r4"
        );
        assert!(store.verify().expect("verify").is_clean());
    }
    let store = open(dir.path(), small_segments());
    assert_eq!(store.stats().mappings, 40);
    for u in 0..40 {
        assert_eq!(
            store
                .get(&format!("u{u}"), "c")
                .expect("get")
                .expect("set")
                .variation_name,
            "r4"
        );
    }
}

#[test]
fn a_batch_with_one_unstorable_map_is_refused_before_anything_is_written() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let maps = [map("a", "c", "V", None), map("", "c", "V", None)];
    assert!(matches!(
        store.set_many(&maps),
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(store.stats().mappings, 0);
    let mut batch = Batch::new();
    assert!(
        batch
            .push(&CampaignUserMap::new("a", "", "V"), None)
            .is_err()
    );
    assert!(batch.is_empty(), "a refused push adds nothing");
    store
        .write_batch(&batch)
        .expect("an empty batch is a no-op");
}

#[test]
fn a_record_larger_than_a_segment_gets_one_of_its_own_in_a_batch() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let big = "g".repeat(10_000);
    let maps = [
        map("a", "c", "V", None),
        map("b", "c", "V", Some(&big)),
        map("c", "c", "V", None),
    ];
    store.set_many(&maps).expect("set_many");
    for m in &maps {
        assert_eq!(store.get(&m.user_id, "c").expect("get").as_ref(), Some(m));
    }
    assert!(store.verify().expect("verify").is_clean());
}

#[test]
fn entries_yield_each_live_mapping_once() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    assert_eq!(store.entries().count(), 0);
    for i in 0..500 {
        store
            .set(&map(
                &format!("u{}", i % 50),
                &format!("c{}", i % 13),
                "V",
                None,
            ))
            .expect("set");
    }
    store.forget_user("u3").expect("forget");
    let keys: Vec<(String, String)> = store
        .entries()
        .map(|e| e.map(|(m, _)| (m.user_id, m.campaign_key)).expect("entry"))
        .collect();
    let unique: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), unique.len(), "no duplicates");
    assert_eq!(keys.len() as u64, store.stats().mappings);
    assert!(!unique.iter().any(|(u, _)| u == "u3"));
}

#[test]
fn sdk_records_parse_and_print_in_one_place() {
    let (m, meta) = ussdb::parse_json_record(
        r#"{"user_id":"u","campaign_key":"c","variation_name":"v","metaData":{"a":1}}"#,
    )
    .expect("parse");
    assert_eq!(
        ussdb::to_json_record(&m, meta.as_deref()),
        r#"{"userId":"u","campaignKey":"c","variationName":"v","metaData":{"a":1}}"#
    );
    // Metadata that is not JSON (stored through the library) is exported as a string rather than lost.
    assert_eq!(
        ussdb::to_json_record(&m, Some("not json")),
        r#"{"userId":"u","campaignKey":"c","variationName":"v","metaData":"not json"}"#
    );
    assert!(matches!(
        ussdb::parse_json_record("{}"),
        Err(Error::Json { .. })
    ));
}

#[test]
fn json_array_elements_are_split_correctly_and_bad_ones_skipped_by_line() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let input = concat!(
        "[\n",
        r#"  {"userId":"a,]","campaignKey":"c","variationName":"V \"x\" ]}","metaData":{"n":[1,{"m":"]"}]}},"#,
        "\n",
        r#"  {"userId":"b","campaignKey":"c"},"#,
        "\n",
        "  42,\n",
        r#"  {"userId":"d","campaignKey":"c","variationName":"V","goalIdentifiers":["g\\"]}"#,
        "\n",
        "]\n",
    );
    let report = import(
        &store,
        input,
        &ImportOptions::default().on_error(OnError::Skip),
    )
    .expect("import");
    assert_eq!((report.records, report.imported, report.skipped), (4, 2, 2));
    let at: Vec<String> = report
        .skips
        .iter()
        .map(|s| s.position.to_string())
        .collect();
    assert_eq!(at, ["array element 2 (line 3)", "array element 3 (line 4)"]);
    assert_eq!(
        store.get_with_meta("a,]", "c").expect("get"),
        Some((
            map("a,]", "c", "V \"x\" ]}", None),
            Some(r#"{"n":[1,{"m":"]"}]}"#.to_owned())
        ))
    );
    assert_eq!(
        store
            .get("d", "c")
            .expect("get")
            .and_then(|m| m.goal_identifier)
            .as_deref(),
        Some("g\\")
    );

    for (bad, at) in [
        ("[", "array element 1 (line 1)"),
        (
            r#"[{"userId":"e","campaignKey":"c","variationName":"V"}] x"#,
            "array element 2 (line 1)",
        ),
        (
            "[{\"userId\":\"e\",\"campaignKey\":\"c\",\"variationName\":\"V\"},,]",
            "array element 2 (line 1)",
        ),
    ] {
        let err = import(
            &store,
            bad,
            &ImportOptions::default().on_error(OnError::Skip),
        )
        .expect_err(bad);
        assert!(
            matches!(&err, Error::Import { at: got, .. } if got == at),
            "{bad}: {err}"
        );
    }
    assert_eq!(
        import(&store, " [ ] ", &ImportOptions::default())
            .expect("empty array")
            .records,
        0
    );
}

#[test]
fn a_batch_in_immediate_mode_costs_one_fsync_not_one_per_mapping() {
    let dir = tempdir();
    let store = open(dir.path(), ussdb::Options::default());
    let maps: Vec<CampaignUserMap> = (0..1000)
        .map(|i| map(&format!("u{i}"), "c", "V", None))
        .collect();
    let before = store.stats().fsyncs;
    store.set_many(&maps).expect("set_many");
    let fsyncs = store.stats().fsyncs - before;
    assert!(fsyncs <= 1, "{fsyncs} fsyncs for one batch");
    assert_eq!(store.stats().sets, 1000);
}

#[test]
fn entries_while_writers_and_compaction_run_never_fail_nor_repeat_a_key() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    for u in 0..300 {
        store
            .set(&map(&format!("stable-{u}"), "c", "V", None))
            .expect("set");
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| {
        let writer = store.clone();
        s.spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Overwrites of the stable keys (moving them to newer segments) and fresh keys.
                let m = map(&format!("stable-{}", i % 300), "c", &format!("V{i}"), None);
                writer.set(&m).expect("overwrite");
                writer
                    .set(&map(&format!("fresh-{i}"), "c", "V", None))
                    .expect("fresh");
                i += 1;
            }
        });
        let compactor = store.clone();
        s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                compactor.compact().expect("compact");
            }
        });
        for _ in 0..50 {
            let mut seen = BTreeSet::new();
            for entry in store.entries() {
                let (m, _) = entry.expect("no error while writers run");
                assert!(seen.insert((m.user_id, m.campaign_key)), "a key came twice");
            }
            let stable = seen
                .iter()
                .filter(|(u, _)| u.starts_with("stable-"))
                .count();
            assert_eq!(stable, 300, "every mapping present throughout is seen");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(
        store.stats().compactions > 0,
        "compaction ran during the walks"
    );
}

#[test]
fn line_numbers_count_leading_blank_lines_and_a_byte_order_mark_is_ignored() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let skip = ImportOptions::default().on_error(OnError::Skip);
    let input = "\u{feff}\n\n  {\"userId\":\"u\"}\n{\"userId\":\"a\",\"campaignKey\":\"c\",\"variationName\":\"V\"}\n";
    let report = import(&store, input, &skip).expect("import");
    assert_eq!(report.imported, 1);
    assert_eq!(report.skips[0].position, Position::Line(3));
    let report = import(&store, "\n\n[\n  {\"userId\":\"u\"}\n]", &skip).expect("import");
    assert_eq!(
        report.skips[0].position,
        Position::Element { index: 1, line: 4 }
    );
}

#[test]
fn a_runaway_line_is_refused_without_reading_it_into_memory_whole() {
    let dir = tempdir();
    let store = open(dir.path(), small_segments());
    let mut input = String::from(
        "{\"userId\":\"a\",\"campaignKey\":\"c\",\"variationName\":\"V\"}\n{\"userId\":\"",
    );
    input.push_str(&"x".repeat(65 << 20));
    input.push_str("\"}\n{\"userId\":\"b\",\"campaignKey\":\"c\",\"variationName\":\"V\"}\n");
    let report = import(
        &store,
        &input,
        &ImportOptions::default().on_error(OnError::Skip),
    )
    .expect("import");
    assert_eq!((report.imported, report.skipped), (2, 1));
    assert_eq!(report.skips[0].position, Position::Line(2));
    assert!(
        report.skips[0].reason.contains("longer than 64 MiB"),
        "{}",
        report.skips[0].reason
    );
    let array = format!("[{}]", &input[..input.len() - 60].replace('\n', ","));
    let err = import(&store, &array, &ImportOptions::default()).expect_err("too long");
    assert!(err.to_string().contains("longer than 64 MiB"), "{err}");
}
