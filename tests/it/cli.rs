//! The `ussdb` command line, run as a user would: exit codes, one-line errors, examples in every `--help`,
//! import/export through files, and verify on a damaged store.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{segment_files, tempdir};

fn ussdb(dir: &Path, args: &[&str]) -> Output {
    ussdb_with_input(dir, args, None)
}

fn ussdb_with_input(dir: &Path, args: &[&str], input: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ussdb"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ussdb");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(stdin);
    child.wait_with_output().expect("wait for ussdb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_subcommand_help_has_an_example() {
    let dir = tempdir();
    for sub in [
        "get",
        "set",
        "delete",
        "forget-user",
        "campaigns",
        "import",
        "export",
        "stats",
        "verify",
        "compact",
        "bench",
    ] {
        let out = ussdb(dir.path(), &[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        let help = text(&out.stdout);
        assert!(
            help.contains("Example: ussdb"),
            "{sub} --help has no example:\n{help}"
        );
    }
}

#[test]
fn set_get_delete_and_their_exit_codes() {
    let dir = tempdir();
    let d = dir.path();
    let out = ussdb(
        d,
        &[
            "set",
            "user-42",
            "checkout",
            "Variation-1",
            "--goals",
            "a_vwo_b",
            "--meta",
            r#"{"k":1}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ussdb(d, &["get", "user-42", "checkout"]);
    assert_eq!(
        text(&out.stdout).trim(),
        r#"{"userId":"user-42","campaignKey":"checkout","variationName":"Variation-1","goalIdentifier":"a_vwo_b","metaData":{"k":1}}"#
    );
    assert_eq!(
        ussdb(d, &["get", "user-42", "other"]).status.code(),
        Some(1)
    );
    assert_eq!(
        ussdb(d, &["delete", "user-42", "checkout"]).status.code(),
        Some(0)
    );
    assert_eq!(
        ussdb(d, &["delete", "user-42", "checkout"]).status.code(),
        Some(1)
    );
    let out = ussdb(d, &["set", "u", "c", "V", "--meta", "{not json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-store");
    for args in [&["get", "u", "c"][..], &["export"], &["verify"], &["stats"]] {
        let out = ussdb(&missing, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("ussdb: ") && err.contains("no store at"),
            "{err}"
        );
        assert!(
            !missing.exists(),
            "a read-only command must not create a store"
        );
    }
    let out = ussdb(dir.path(), &["set", "", "c", "V"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr).lines().count(), 1);
    assert!(text(&out.stderr).contains("invalid user_id"));
}

#[test]
fn import_export_round_trip_through_files_with_a_skipped_line() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"user_id":"u1","campaign_key":"c","variation_name":"V","goal_identifier":"_vwo_x"}"#, "\n",
            "{broken\n",
            r#"{"userId":"u2","campaignKey":"c","variationName":"W","metaData":{"a":[1,2]}}"#, "\n",
        ),
    )
    .expect("write input");
    let path = input.to_str().expect("utf-8 path");

    let out = ussdb(&a, &["import", path]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("line 2") && err.contains("1 mappings before it were imported"),
        "{err}"
    );

    let out = ussdb(&a, &["import", path, "--on-error", "skip"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("imported 2 mappings from 3 records (1 skipped)"));
    assert!(text(&out.stderr).contains("skipped line 2"));
    // Not a terminal: no progress bar drawing in the output.
    assert!(!text(&out.stderr).contains('\r') && !text(&out.stderr).contains('\u{1b}'));

    let exported = dir.path().join("out.jsonl");
    let out = ussdb(
        &a,
        &["export", "--output", exported.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = std::fs::read_to_string(&exported).expect("read export");
    assert_eq!(first.lines().count(), 2);
    assert!(first.contains(r#""metaData":{"a":[1,2]}"#), "{first}");

    let out = ussdb_with_input(&b, &["import", "-"], Some(&first));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = text(&ussdb(&b, &["export"]).stdout);
    let mut x: Vec<&str> = first.lines().collect();
    let mut y: Vec<&str> = again.lines().collect();
    x.sort_unstable();
    y.sort_unstable();
    assert_eq!(x, y);
}

#[test]
fn verify_is_one_line_when_clean_and_names_damage_with_exit_code_1() {
    let dir = tempdir();
    let d = dir.path();
    let mut lines = String::new();
    for i in 0..100_000 {
        lines.push_str(&format!(
            "{{\"userId\":\"user-{i}\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n"
        ));
    }
    let out = ussdb_with_input(d, &["--durability", "never", "import", "-"], Some(&lines));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = ussdb(d, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("ok: ") && stdout.contains("100000 mappings"),
        "{stdout}"
    );

    let seg = segment_files(d)[0].clone();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, b"\xff\xff", 5000).expect("damage");
    drop(file);
    let out = ussdb(d, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let name = seg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("damage: ") && l.contains(&name) && l.contains("offset")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("DAMAGED: ")),
        "{stdout}"
    );
}

#[test]
fn compact_reclaims_overwritten_records_and_verify_stays_clean() {
    let dir = tempdir();
    let d = dir.path();
    for round in 0..3 {
        let lines: String = (0..2000)
            .map(|i| format!("{{\"userId\":\"user-{i}\",\"campaignKey\":\"c\",\"variationName\":\"V{round}\"}}\n"))
            .collect();
        assert!(
            ussdb_with_input(d, &["--durability", "never", "import", "-"], Some(&lines))
                .status
                .success()
        );
    }
    let out = ussdb(d, &["compact"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.starts_with("compacted in "), "{summary}");
    let stats = text(&ussdb(d, &["stats"]).stdout);
    assert!(stats.contains("dead bytes           0"), "{stats}");
    let out = ussdb(d, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("2000 mappings"),
        "{}",
        text(&out.stdout)
    );
    let got = text(&ussdb(d, &["get", "user-7", "c"]).stdout);
    assert!(got.contains("\"variationName\":\"V2\""), "{got}");
}

#[test]
fn a_reader_that_stops_early_ends_export_quietly() {
    let dir = tempdir();
    let d = dir.path();
    let lines: String = (0..20_000)
        .map(|i| {
            format!("{{\"userId\":\"user-{i}\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n")
        })
        .collect();
    assert!(
        ussdb_with_input(d, &["--durability", "never", "import", "-"], Some(&lines))
            .status
            .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ussdb"))
        .arg("--dir")
        .arg(d)
        .arg("export")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ussdb");
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut first).expect("read");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(141));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}
