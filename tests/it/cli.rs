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
        // A command may refuse before it reads its input, and exit: a broken pipe here is not a failure.
        let _ = stdin.write_all(input.as_bytes());
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
        "backup",
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
        err.contains("line 2") && err.contains("1 mapping before it was imported"),
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

/// Runs `ussdb` in `cwd` without `--dir`, as a new user would.
fn ussdb_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ussdb"))
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ussdb")
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sends SIGINT (what Ctrl-C sends) to a child process.
fn ctrl_c(child: &std::process::Child) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .expect("run sh");
    assert!(status.success(), "kill -INT failed");
}

/// Waits until `ready` holds; a condition to wait for, not a timing that is asserted.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The store directory a bench names in its first line (`ussdb bench in DIR: ...`).
fn bench_store(stdout: &str) -> String {
    stdout
        .strip_prefix("ussdb bench in ")
        .and_then(|rest| rest.split_once(": "))
        .map(|(dir, _)| dir.to_owned())
        .unwrap_or_else(|| panic!("no store named in {stdout}"))
}

#[test]
fn bench_deletes_nothing_it_did_not_create() {
    let dir = tempdir();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(proj.join("bench")).expect("mkdir");
    std::fs::write(proj.join("bench/important.txt"), "notes\n").expect("write");
    std::fs::write(proj.join("bench-1"), "a file named like a bench store\n").expect("write");

    let out = ussdb(&proj, &["bench", "--users", "100", "--ops", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(proj.join("bench/important.txt")).expect("important.txt survives"),
        "notes\n"
    );
    assert_eq!(names(&proj), ["bench", "bench-1"]);
    assert_eq!(names(&proj.join("bench")), ["important.txt"]);

    // --keep leaves a whole store, in a directory of its own, that verifies clean.
    let out = ussdb(
        &proj,
        &["bench", "--users", "100", "--ops", "1000", "--keep"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let kept = std::path::PathBuf::from(bench_store(&stdout));
    assert!(stdout.contains(&format!("kept   the bench store in {}", kept.display())));
    assert_eq!(kept.parent(), Some(proj.as_path()));
    let out = ussdb(&kept, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(names(&proj).len(), 3);
}

#[test]
fn two_benches_on_one_directory_at_once_both_finish() {
    let dir = tempdir();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).expect("mkdir");
    std::fs::write(proj.join("notes.txt"), "mine\n").expect("write");
    let args = [
        "bench",
        "--users",
        "2000",
        "--ops",
        "20000",
        "--durability",
        "never",
    ];
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_ussdb"))
            .arg("--dir")
            .arg(&proj)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ussdb")
    };
    let (first, second) = (spawn(), spawn());
    let (first, second) = (
        first.wait_with_output().expect("wait"),
        second.wait_with_output().expect("wait"),
    );
    for out in [&first, &second] {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("store  "),
            "{}",
            text(&out.stdout)
        );
    }
    assert_ne!(
        bench_store(&text(&first.stdout)),
        bench_store(&text(&second.stdout)),
        "each bench has a store of its own"
    );
    assert_eq!(names(&proj), ["notes.txt"]);
}

#[test]
fn bench_report_says_what_ran_and_leaves_nothing_behind() {
    let dir = tempdir();
    let out = ussdb_in(
        dir.path(),
        &["bench", "--users", "100", "--ops", "1001", "--threads", "3"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        names(dir.path()).is_empty(),
        "the default ./ussdb-data it created is removed"
    );
    let stdout = text(&out.stdout);
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
            .to_owned()
    };
    let header = line("ussdb bench in ");
    assert!(
        header.contains("with durability never (set-up")
            && header.contains("1001 SDK requests on 3 threads with durability immediate"),
        "{header}"
    );
    assert!(line("load ").ends_with("durability never"), "{stdout}");
    assert!(line("open ").ends_with(" in 1 segment"), "{stdout}");

    // Requests add up to --ops; store operations are counted apart: one get per request, plus the sets.
    let numbers = |l: &str| -> Vec<u64> {
        l.split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let run = line("run ");
    assert!(
        run.contains("1001 SDK requests") && run.contains("with durability immediate"),
        "{run}"
    );
    let kinds: Vec<u64> = numbers(run.split_once('(').expect("kinds").1);
    assert_eq!(kinds.iter().sum::<u64>(), 1001, "{run}");
    let store = numbers(&line("store "));
    let (ops, gets, sets) = (store[0], store[1], store[2]);
    assert_eq!(gets, 1001, "{stdout}");
    assert_eq!(ops, gets + sets, "{stdout}");
    assert!(sets <= kinds[1] + kinds[2], "{stdout}");
}

#[test]
fn ctrl_c_stops_a_bench_and_removes_its_store() {
    let dir = tempdir();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).expect("mkdir");
    std::fs::write(proj.join("notes.txt"), "mine\n").expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_ussdb"))
        .arg("--dir")
        .arg(&proj)
        .args([
            "bench",
            "--users",
            "1000",
            "--ops",
            "1000000000",
            "--durability",
            "never",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ussdb");
    wait_until("the bench store", || names(&proj).len() == 2);
    ctrl_c(&child);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted by Ctrl-C"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(names(&proj), ["notes.txt"]);
}

#[test]
fn reads_never_create_a_store_and_writes_never_go_among_other_files() {
    let dir = tempdir();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for args in [
        &["get", "u", "c"][..],
        &["campaigns", "u"],
        &["delete", "u", "c"],
        &["forget-user", "u"],
        &["export"],
        &["stats"],
        &["verify"],
        &["compact"],
    ] {
        let out = ussdb(&empty, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("no store at {}", empty.display()))
                && err.contains("empty")
                && !err.contains("pass --dir"),
            "{args:?}: {err}"
        );
        assert!(names(&empty).is_empty(), "{args:?} wrote into {empty:?}");
    }

    // A directory of other files is not a store: reads say so, writes refuse to make one there.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("draft.tmp"), "mine\n").expect("write");
    let err = text(&ussdb(&other, &["get", "u", "c"]).stderr);
    assert!(err.contains("neither a SEED file nor a segment"), "{err}");
    for (args, input) in [
        (&["set", "u", "c", "V"][..], None),
        (
            &["import", "-"],
            Some("{\"userId\":\"u\",\"campaignKey\":\"c\",\"variationName\":\"V\"}\n"),
        ),
    ] {
        let out = ussdb_with_input(&other, args, input);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("draft.tmp") && err.contains("refusing"),
            "{err}"
        );
        assert_eq!(names(&other), ["draft.tmp"], "{args:?}");
    }

    // An empty or missing directory becomes a store on the first write; reads then find it.
    let fresh = dir.path().join("fresh");
    for d in [&empty, &fresh] {
        let out = ussdb(d, &["set", "u", "c", "V"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(ussdb(d, &["get", "u", "c"]).status.success());
    }

    // Only the default --dir is worth a hint about --dir.
    let out = ussdb(&dir.path().join("nodir"), &["get", "u", "c"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("does not exist") && !err.contains("pass --dir"),
        "{err}"
    );
    let out = ussdb_in(dir.path(), &["get", "u", "c"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("no store at ussdb-data") && err.contains("pass --dir DIR"),
        "{err}"
    );
    assert!(!dir.path().join("ussdb-data").exists());
}

#[test]
fn import_names_its_input_and_fails_when_nothing_could_be_imported() {
    let dir = tempdir();
    let store = dir.path().join("store");
    let input_dir = dir.path().join("exports");
    std::fs::create_dir(&input_dir).expect("mkdir");
    let out = ussdb(&store, &["import", input_dir.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{} is a directory", input_dir.display()))
            && !err.contains("<input>"),
        "{err}"
    );
    let out = ussdb(&store, &["import", "no-such-file.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no-such-file.jsonl"));
    assert!(
        !store.exists(),
        "a failed import must not leave a store behind"
    );

    let all_bad = "{broken\n{\"userId\":\"\",\"campaignKey\":\"c\",\"variationName\":\"V\"}\n";
    let out = ussdb_with_input(
        &store,
        &["import", "-", "--on-error", "skip"],
        Some(all_bad),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("NOTHING IMPORTED: all 2 records of standard input were bad"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("imported 0 mappings from 2 records (2 skipped)"));

    // One good record among bad ones is a success that lists what was skipped.
    let some_good =
        format!("{all_bad}{{\"userId\":\"u\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n");
    let out = ussdb_with_input(
        &store,
        &["import", "-", "--on-error", "skip"],
        Some(&some_good),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn ctrl_c_during_an_import_prints_what_was_imported() {
    let dir = tempdir();
    let d = dir.path().join("store");
    let record = |i: u32| {
        format!("{{\"userId\":\"user-{i}\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n")
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ussdb"))
        .arg("--dir")
        .arg(&d)
        .args(["--durability", "never", "import", "-", "--batch-size", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ussdb");
    let mut stdin = child.stdin.take().expect("stdin");
    let first: String = (1..=10).map(record).collect();
    let eleventh = record(11);
    let (head, tail) = eleventh.split_at(20);
    stdin.write_all(first.as_bytes()).expect("write");
    stdin.write_all(head.as_bytes()).expect("write");
    stdin.flush().expect("flush");
    // The store's lock file appears once the import has set up its Ctrl-C handling and opened the store.
    wait_until("the store to be opened", || d.join("LOCK").exists());
    ctrl_c(&child);
    // The line under way is finished; nothing after it is read.
    stdin.write_all(tail.as_bytes()).expect("write");
    let rest: String = (12..=20).map(record).collect();
    let _ = stdin.write_all(rest.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let imported: u64 = stdout
        .strip_prefix("imported ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    assert!(
        stdout.contains(&format!(
            "imported {imported} mappings from {imported} records (0 skipped)"
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "interrupted by Ctrl-C after line {imported} of standard input"
        )) && stderr.contains(&format!("the rest starts at line {}", imported + 1)),
        "{stderr}"
    );
    assert!(imported <= 11, "{stdout}");
    // The summary is the truth: exactly lines 1 to N are in the store.
    let exported = text(&ussdb(&d, &["export"]).stdout);
    let mut users: Vec<String> = exported
        .lines()
        .map(|l| {
            let (map, _) = ussdb::parse_json_record(l).expect("exported record");
            map.user_id
        })
        .collect();
    users.sort_by_key(|u| u.trim_start_matches("user-").parse::<u64>().unwrap_or(0));
    let expected: Vec<String> = (1..=imported).map(|i| format!("user-{i}")).collect();
    assert_eq!(users, expected);
}

#[test]
fn small_things_a_new_user_meets() {
    let dir = tempdir();
    let d = dir.path().join("store");

    // Repeated --goals are joined as the SDKs join them.
    let out = ussdb(&d, &["set", "u", "c", "V", "--goals", "a", "--goals", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = text(&ussdb(&d, &["get", "u", "c"]).stdout);
    assert!(got.contains(r#""goalIdentifier":"a_vwo_b""#), "{got}");

    // Every argument of set is described in --help.
    let help = text(&ussdb(&d, &["set", "--help"]).stdout);
    for arg in ["<USER>", "<CAMPAIGN>", "<VARIATION>"] {
        let described = help
            .lines()
            .skip_while(|l| l.trim() != arg)
            .nth(1)
            .is_some_and(|l| !l.trim().is_empty());
        assert!(described, "{arg} has no description:\n{help}");
    }

    // export --output does not overwrite a file unless told to.
    let target = dir.path().join("users.jsonl");
    std::fs::write(&target, "precious\n").expect("write");
    let path = target.to_str().expect("utf-8");
    let out = ussdb(&d, &["export", "--output", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&target).expect("read"),
        "precious\n"
    );
    let out = ussdb(&d, &["export", "--output", path, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        std::fs::read_to_string(&target)
            .expect("read")
            .contains("\"userId\":\"u\"")
    );

    // A store held by a writer: the message says what to do.
    let held = ussdb::Store::open(&d).expect("open store");
    let out = ussdb(&d, &["get", "u", "c"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("in use by another process")
            && err.contains("Stop that process")
            && err.contains("Store::backup"),
        "{err}"
    );
    drop(held);

    // A store held by a reader: commands that read share it, those that write are told why they cannot.
    let reader = ussdb::Store::open_with(&d, ussdb::Options::default().read_only(true))
        .expect("open read-only");
    assert!(ussdb(&d, &["get", "u", "c"]).status.success());
    let out = ussdb(&d, &["set", "u", "c", "W"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("in use by another process"));
    drop(reader);
}

#[test]
fn reads_write_nothing_and_backup_makes_a_store_that_verifies() {
    let dir = tempdir();
    let d = dir.path().join("store");
    assert!(ussdb(&d, &["set", "u", "c", "V"]).status.success());
    std::fs::remove_file(d.join("LOCK")).expect("remove LOCK");
    let before = names(&d);
    for args in [
        &["get", "u", "c"][..],
        &["campaigns", "u"],
        &["export"],
        &["stats"],
        &["verify"],
    ] {
        let out = ussdb(&d, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(names(&d), before, "{args:?} wrote into the store");
    }
    let out = ussdb(&d, &["--read-only", "set", "u", "c", "W"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--read-only: `set` writes to the store"),
        "{}",
        text(&out.stderr)
    );

    let copy = dir.path().join("copy");
    let out = ussdb(&d, &["backup", copy.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("backed up 1 segment in "),
        "{}",
        text(&out.stdout)
    );
    assert!(ussdb(&copy, &["verify"]).status.success());
    let got = text(&ussdb(&copy, &["get", "u", "c"]).stdout);
    assert!(got.contains("\"variationName\":\"V\""), "{got}");
    // A second backup into the same, now full, directory is refused.
    assert_eq!(
        ussdb(&d, &["backup", copy.to_str().expect("utf-8")])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn import_messages_give_each_position_once_and_any_key_casing_is_read() {
    let dir = tempdir();
    let d = dir.path().join("store");

    // .NET-style PascalCase keys are read like the other SDKs' spellings.
    let dotnet = concat!(
        r#"{"UserId":"u1","CampaignKey":"c","VariationName":"V","GoalIdentifiers":["a","b"],"MetaData":{"k":1}}"#,
        "\n",
        r#"{"USER_ID":"u2","campaign_KEY":"c","variationname":"W"}"#,
        "\n",
    );
    let out = ussdb_with_input(&d, &["import", "-"], Some(dotnet));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&ussdb(&d, &["get", "u1", "c"]).stdout).trim(),
        r#"{"userId":"u1","campaignKey":"c","variationName":"V","goalIdentifier":"a_vwo_b","metaData":{"k":1}}"#
    );
    assert!(ussdb(&d, &["get", "u2", "c"]).status.success());

    // A missing field: the line once, the column once, the accepted names, no parser-relative position.
    let input = concat!(
        r#"{"userId":"u3","campaignKey":"c","variationName":"V"}"#,
        "\n\n",
        r#"{"user":"u4","campaignKey":"c","variationName":"V"}"#,
        "\n",
    );
    let out = ussdb_with_input(&d, &["import", "-"], Some(input));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ussdb: import stopped at line 3: invalid user storage JSON at column ")
            && err.contains("missing field `userId` (accepted names: userId, user_id")
            && err.contains("(1 mapping before it was imported, none after it)"),
        "{err}"
    );
    assert_eq!(err.matches("line").count(), 1, "{err}");

    // Records of the wrong shape name what was expected in the SDKs' terms, not an internal type.
    let out = ussdb_with_input(
        &d,
        &["import", "-", "--on-error", "skip"],
        Some(concat!(
            "42\n",
            r#"{"userId":"u5","user_id":"u6","campaignKey":"c","variationName":"V"}"#,
            "\n",
            r#"{"userId":"u7","campaignKey":"c","variationName":""}"#,
            "\n",
            r#"{"userId":"u8","campaignKey":"c","variationName":"V"}"#,
            "\n",
        )),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        !err.contains("SdkRecord") && !err.contains("struct"),
        "{err}"
    );
    assert!(
        err.contains("skipped line 1: invalid user storage JSON at column ")
            && err.contains("expected a JSON object with userId, campaignKey and variationName"),
        "{err}"
    );
    assert!(
        err.contains("skipped line 2: ") && err.contains("`userId` is given more than once"),
        "{err}"
    );
    assert!(
        err.contains("skipped line 3: invalid variation_name \"\": must not be empty"),
        "{err}"
    );

    // Inside a multi-line array element: the element and its first line from the import, the exact line and
    // column from the parser, each once.
    let array = "[\n  {\"userId\":\"a\",\"campaignKey\":\"c\",\"variationName\":\"V\"},\n  {\"userId\":\"b\",\n   \"campaignKey\":5}\n]\n";
    let out = ussdb_with_input(&dir.path().join("other"), &["import", "-"], Some(array));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(
            "ussdb: import stopped at array element 2 (line 3): invalid user storage JSON at line 4, column "
        ),
        "{err}"
    );
    assert_eq!(err.matches("line").count(), 2, "{err}");
}

#[test]
fn an_empty_variation_name_is_refused() {
    let dir = tempdir();
    let d = dir.path().join("store");
    let out = ussdb(&d, &["set", "u", "c", ""]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid variation_name \"\": must not be empty"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !d.exists(),
        "a refused set must not leave a new store behind"
    );
}

#[test]
fn repair_lists_what_it_dropped_and_the_store_opens_again() {
    let dir = tempdir();
    let d = dir.path();
    let mut lines = String::new();
    for i in 0..20_000 {
        lines.push_str(&format!(
            "{{\"userId\":\"user-{i}\",\"campaignKey\":\"c\",\"variationName\":\"V\"}}\n"
        ));
    }
    let out = ussdb_with_input(d, &["--durability", "never", "import", "-"], Some(&lines));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ussdb(d, &["repair"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );

    let seg = segment_files(d)[0].clone();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, b"\xff\xff", 5000).expect("damage");
    drop(file);
    assert!(!ussdb(d, &["stats"]).status.success());
    let out = ussdb(d, &["repair"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with("lost: ")), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("REPAIRED: ")),
        "{stdout}"
    );
    let out = ussdb(d, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// Beside worker processes that hold a store in the multi-process mode, a command joins that mode: it reads what
/// they wrote, and what it writes they read.
#[test]
fn commands_join_a_store_held_in_the_multi_process_mode() {
    let dir = tempdir();
    let store = ussdb::Store::open_with(dir.path(), ussdb::Options::default().shared(true))
        .expect("open shared");
    store
        .set(&ussdb::CampaignUserMap::new("u1", "home", "Control"))
        .expect("set");
    let out = ussdb(dir.path(), &["get", "u1", "home"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"variationName\":\"Control\""));
    let out = ussdb(dir.path(), &["set", "u2", "home", "Variation-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = store
        .get("u2", "home")
        .expect("get")
        .expect("the command's write");
    assert_eq!(got.variation_name, "Variation-1");
    // --read-only never joins (joining writes to the directory): it says the store is in use.
    let out = ussdb(dir.path(), &["--read-only", "get", "u1", "home"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
}
