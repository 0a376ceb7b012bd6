//! The `ussdb` command line against real Redis servers: `--redis` and `--redis-cluster` on the tiered store,
//! `import --from-redis` of a keyspace VWO's helpers wrote, `export --to-redis` under the fleet rule, and a set
//! made while Redis is down, shipped by the next command.

use std::path::Path;
use std::process::{Command, Output};

use super::servers::{RedisCluster, RedisServer};

fn ussdb(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ussdb"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run ussdb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `ussdb` and fails the test, with its output, unless it exits with `code`.
fn run(dir: &Path, args: &[&str], code: i32) -> Output {
    let out = ussdb(dir, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ussdb {args:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn two_directories_sharing_one_redis_agree_on_the_first_assignment() {
    let server = RedisServer::start();
    let url = server.url();
    let dirs = tempfile::tempdir().unwrap();
    let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));

    run(
        &a,
        &[
            "--redis",
            &url,
            "set",
            "user-1",
            "checkout",
            "Variation-1",
            "--goals",
            "view",
        ],
        0,
    );
    assert_eq!(
        server.cli(&["GET", "checkout:user-1"]),
        r#"{"userId":"user-1","variationName":"Variation-1","campaignKey":"checkout","goalIdentifier":"view"}"#,
        "the set is in Redis when the command returns, in the helpers' format"
    );

    // Another server's store assigns another variation: the first one stays, the goal is added.
    let out = run(
        &b,
        &[
            "--redis",
            &url,
            "set",
            "user-1",
            "checkout",
            "Variation-2",
            "--goals",
            "buy",
        ],
        0,
    );
    assert!(
        text(&out.stderr).contains("keeps variation \"Variation-1\""),
        "{}",
        text(&out.stderr)
    );
    for dir in [&a, &b] {
        let got = json(&run(
            dir,
            &["--redis", &url, "get", "user-1", "checkout"],
            0,
        ));
        assert_eq!(got["variationName"], "Variation-1");
        assert_eq!(got["goalIdentifier"], "view_vwo_buy");
    }
    // The local copy took Redis's answer: without --redis it says the same.
    let local = json(&run(&a, &["get", "user-1", "checkout"], 0));
    assert_eq!(local["goalIdentifier"], "view_vwo_buy");

    // A mapping only Redis holds is found through --redis, not in the local store alone.
    server.cli(&[
        "SET",
        "home:u9",
        r#"{"userId":"u9","campaignKey":"home","variationName":"Control"}"#,
    ]);
    run(&a, &["get", "u9", "home"], 1);
    assert_eq!(
        json(&run(&a, &["--redis", &url, "get", "u9", "home"], 0))["variationName"],
        "Control"
    );
    run(&a, &["--redis", &url, "get", "nobody", "home"], 1);

    // Export through the tier: the mappings, without the tier's own bookkeeping.
    let out = run(&a, &["--redis", &url, "export"], 0);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.get("metaData").is_none()),
        "{lines:?}"
    );
}

#[test]
fn import_through_the_tier_ships_every_record() {
    let server = RedisServer::start();
    let url = server.url();
    let dirs = tempfile::tempdir().unwrap();
    let file = dirs.path().join("users.jsonl");
    std::fs::write(
        &file,
        "{\"userId\":\"u1\",\"campaignKey\":\"c\",\"variationName\":\"A\"}\nnot json\n\
         {\"user_id\":\"u2\",\"campaign_key\":\"c\",\"variation_name\":\"B\",\"goal_identifiers\":[\"g\"]}\n",
    )
    .unwrap();
    let store = dirs.path().join("s");
    let out = run(
        &store,
        &["--redis", &url, "import", file.to_str().unwrap()],
        2,
    );
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &store,
        &[
            "--redis",
            &url,
            "import",
            file.to_str().unwrap(),
            "--on-error",
            "skip",
        ],
        0,
    );
    assert!(
        text(&out.stderr).contains("skipped line 2"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("imported 2 mappings"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        server
            .cli(&["GET", "c:u1"])
            .contains("\"variationName\":\"A\"")
    );
    assert!(
        server
            .cli(&["GET", "c:u2"])
            .contains("\"goalIdentifier\":\"g\"")
    );
}

#[test]
fn import_from_redis_scans_a_helpers_keyspace_and_names_bad_values() {
    let server = RedisServer::start();
    let url = server.url();
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.set(
            format!("checkout:user-{i}"),
            format!(
                r#"{{"userId":"user-{i}","variationName":"V{}","campaignKey":"checkout"}}"#,
                i % 3
            ),
        )
        .ignore();
    }
    pipe.query::<()>(&mut server.raw()).unwrap();
    server.cli(&[
        "SET",
        "home:u1",
        r#"{"userId":"u1","campaignKey":"home","variationName":"Control","goalIdentifier":"a"}"#,
    ]);
    server.cli(&["SET", "checkout:broken", "this is not JSON"]);

    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("s");
    // The default stops at the bad value; with --on-error skip it is named and the rest imported.
    let out = run(
        &store,
        &["import", "--from-redis", &url, "--on-error", "skip"],
        0,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("imported 2501 mappings from 2502 keys"),
        "{stdout}"
    );
    assert!(
        stderr.contains("checkout:broken"),
        "the bad key is named: {stderr}"
    );
    assert_eq!(
        json(&run(&store, &["get", "user-7", "checkout"], 0))["variationName"],
        "V1"
    );
    assert_eq!(
        json(&run(&store, &["get", "u1", "home"], 0))["goalIdentifier"],
        "a"
    );

    // --match limits the walk; Redis's variation replaces a local one, and a local goal is kept (after Redis's).
    let other = dirs.path().join("o");
    run(
        &other,
        &["set", "u1", "home", "Variation-X", "--goals", "local-goal"],
        0,
    );
    let out = run(
        &other,
        &["import", "--from-redis", &url, "--match", "home:*"],
        0,
    );
    assert!(
        text(&out.stdout).contains("imported 1 mappings from 1 keys"),
        "{}",
        text(&out.stdout)
    );
    let got = json(&run(&other, &["get", "u1", "home"], 0));
    assert_eq!(got["variationName"], "Control");
    assert_eq!(got["goalIdentifier"], "a_vwo_local-goal");
    run(&other, &["get", "user-1", "checkout"], 1);

    // Without --on-error skip, the bad value stops the import with exit code 2, naming the key.
    let out = run(
        &dirs.path().join("strict"),
        &["import", "--from-redis", &url, "--match", "checkout:b*"],
        2,
    );
    assert!(
        text(&out.stderr).contains("checkout:broken"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn export_to_redis_never_reassigns_a_user_redis_already_holds() {
    let server = RedisServer::start();
    let url = server.url();
    server.cli(&[
        "SET",
        "c:u1",
        r#"{"userId":"u1","variationName":"First","campaignKey":"c"}"#,
    ]);
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("s");
    run(&store, &["set", "u1", "c", "Second", "--goals", "g"], 0);
    run(&store, &["set", "u2", "c", "Third"], 0);
    let out = run(&store, &["export", "--to-redis", &url], 0);
    assert!(
        text(&out.stdout).contains("pushed 2 mappings"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("1 keys already held another variation"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        server.cli(&["GET", "c:u1"]),
        r#"{"userId":"u1","variationName":"First","campaignKey":"c","goalIdentifier":"g"}"#
    );
    assert_eq!(
        server.cli(&["GET", "c:u2"]),
        r#"{"userId":"u2","variationName":"Third","campaignKey":"c"}"#
    );
    // The local store is only read.
    assert_eq!(
        json(&run(&store, &["get", "u1", "c"], 0))["variationName"],
        "Second"
    );
}

#[test]
fn a_set_while_redis_is_down_waits_in_the_outbox_and_ships_with_the_next_command() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("s");
    let out = run(&store, &["--redis", &url, "set", "u1", "c", "V1"], 0);
    assert!(
        text(&out.stderr).contains("stay queued in the outbox"),
        "{}",
        text(&out.stderr)
    );
    // While Redis is down, a mapping waiting for it is answered from the local copy; one the local store lacks
    // is not found, with a warning that Redis could not be asked.
    let out = run(&store, &["--redis", &url, "get", "u1", "c"], 0);
    assert_eq!(json(&out)["variationName"], "V1");
    let out = run(&store, &["--redis", &url, "get", "u2", "c"], 1);
    assert!(
        text(&out.stderr).contains("cannot be reached"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&store, &["--redis", &url, "stats"], 0);
    let stats = text(&out.stdout);
    assert!(stats.contains("outbox depth         1"), "{stats}");
    assert!(stats.contains("redis reachable      no"), "{stats}");

    server.restart();
    assert_eq!(server.cli(&["EXISTS", "c:u1"]), "0");
    // Any command with --redis sends what waits; export waits for it before writing.
    run(&store, &["--redis", &url, "export"], 0);
    assert_eq!(
        server.cli(&["GET", "c:u1"]),
        r#"{"userId":"u1","variationName":"V1","campaignKey":"c"}"#
    );
    let stats = text(&run(&store, &["--redis", &url, "stats"], 0).stdout);
    assert!(stats.contains("outbox depth         0"), "{stats}");
    assert!(stats.contains("redis reachable      yes"), "{stats}");
}

#[test]
fn redis_options_refuse_what_they_cannot_do() {
    let server = RedisServer::start();
    let url = server.url();
    let dirs = tempfile::tempdir().unwrap();
    let store = dirs.path().join("s");
    run(&store, &["set", "u1", "c", "V1"], 0);
    let out = run(&store, &["--redis", &url, "verify"], 2);
    assert!(
        text(&out.stderr).contains("run it without --redis"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &store,
        &["--redis", &format!("{url},{url}"), "get", "u1", "c"],
        2,
    );
    assert!(
        text(&out.stderr).contains("--redis-cluster"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&store, &["--redis", "http://nowhere", "get", "u1", "c"], 2);
    assert!(
        text(&out.stderr).contains("not a redis:// URL"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &store,
        &["--redis", &url, "set", "u1", "c", "V1", "--meta", "{}"],
        2,
    );
    assert!(
        text(&out.stderr).contains("--meta"),
        "{}",
        text(&out.stderr)
    );
    // A wrong URL leaves no new store behind.
    let fresh = dirs.path().join("fresh");
    run(
        &fresh,
        &["import", "--from-redis", "redis://127.0.0.1:1"],
        2,
    );
    assert!(!fresh.exists());
    // Passwords never show.
    let secret = RedisServer::with_password("s3cret");
    let out = run(
        &store,
        &["export", "--to-redis", "redis://:wrong@127.0.0.1:1"],
        2,
    );
    assert!(
        !text(&out.stderr).contains("wrong"),
        "{}",
        text(&out.stderr)
    );
    run(&store, &["export", "--to-redis", &secret.url()], 0);
    assert!(secret.cli(&["GET", "c:u1"]).contains("V1"));
}

#[test]
fn redis_cluster_through_its_seed_nodes() {
    let cluster = RedisCluster::start();
    let seeds = cluster.urls().join(",");
    let dirs = tempfile::tempdir().unwrap();
    let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));
    for i in 0..20 {
        run(
            &a,
            &[
                "--redis-cluster",
                &seeds,
                "set",
                &format!("u{i}"),
                "c",
                "First",
            ],
            0,
        );
    }
    for i in 0..20 {
        run(
            &b,
            &[
                "--redis-cluster",
                &seeds,
                "set",
                &format!("u{i}"),
                "c",
                "Second",
            ],
            0,
        );
        let got = json(&run(
            &b,
            &["--redis-cluster", &seeds, "get", &format!("u{i}"), "c"],
            0,
        ));
        assert_eq!(got["variationName"], "First");
    }
    // One seed node is enough; import --from-redis walks every master.
    let out = run(
        &dirs.path().join("m"),
        &["import", "--from-redis", &seeds, "--match", "c:*"],
        0,
    );
    assert!(
        text(&out.stdout).contains("imported 20 mappings from 20 keys"),
        "{}",
        text(&out.stdout)
    );
    let first = cluster.urls().swap_remove(0);
    run(&b, &["--redis-cluster", &first, "get", "u3", "c"], 0);
}
