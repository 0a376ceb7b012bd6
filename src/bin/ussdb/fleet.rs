//! The fleet commands: `--redis URL` / `--redis-cluster URLS` (get, set, import, export and stats on the tiered
//! store a server of the fleet opens: the local store at `--dir` in front of Redis), `import --from-redis`
//! (a VWO Redis keyspace into a local store) and `export --to-redis` (a local store into Redis, under the fleet
//! rule). Built with the cargo feature `redis`; without it each says how to get it.

#[cfg(not(feature = "redis"))]
use std::process::ExitCode;

#[cfg(not(feature = "redis"))]
use super::{Cli, ErrorMode};

#[cfg(not(feature = "redis"))]
const NO_REDIS: &str = "this ussdb was built without Redis support: rebuild it with the cargo feature `redis` \
     (cargo install ussdb --features redis)";

#[cfg(not(feature = "redis"))]
pub fn run_tiered(_cli: &Cli) -> Result<ExitCode, String> {
    Err(NO_REDIS.to_owned())
}

#[cfg(not(feature = "redis"))]
pub fn import_from_redis(
    _cli: &Cli,
    _url: &str,
    _pattern: &str,
    _on_error: ErrorMode,
    _batch_size: usize,
) -> Result<ExitCode, String> {
    Err(NO_REDIS.to_owned())
}

#[cfg(not(feature = "redis"))]
pub fn export_to_redis(_cli: &Cli, _url: &str) -> Result<ExitCode, String> {
    Err(NO_REDIS.to_owned())
}

#[cfg(feature = "redis")]
pub use with_redis::{export_to_redis, import_from_redis, run_tiered};

#[cfg(feature = "redis")]
mod with_redis {
    use std::fs::File;
    use std::io::{BufRead, BufReader, BufWriter, Read, Write};
    use std::path::Path;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use ussdb::{
        Batch, CampaignUserMap, GOAL_DELIMITER, RedisConfig, RedisStore, Store, TierOptions, Tiered,
    };

    use super::super::{
        Access, Cli, Command, ErrorMode, check_dir, describe, options, print_stats, stdout_failed,
    };

    /// How long a command waits for Redis to take what it queued before it leaves the rest in the outbox.
    const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
    /// Mappings sent to Redis at once by `export --to-redis`.
    const PUSH_BATCH: usize = 512;

    /// The Redis of `--redis` or `--redis-cluster`.
    fn tier_config(cli: &Cli) -> Result<RedisConfig, String> {
        match (&cli.redis, &cli.redis_cluster) {
            (Some(url), _) if url.contains(',') => Err(format!(
                "--redis takes one URL; for a Cluster's seed nodes use --redis-cluster {url}"
            )),
            (Some(url), _) => parse_config(url),
            (None, Some(urls)) => {
                let config = parse_config(urls)?;
                if config.is_cluster() {
                    Ok(config)
                } else {
                    // One seed node is enough to find a Cluster.
                    Ok(RedisConfig::cluster([urls.trim().to_owned()]))
                }
            }
            (None, None) => {
                Err("no Redis given (--redis URL or --redis-cluster URL,URL,...)".into())
            }
        }
    }

    fn parse_config(spec: &str) -> Result<RedisConfig, String> {
        RedisConfig::parse(spec).map_err(|e| e.to_string())
    }

    /// Opens the tiered store at `--dir`. Every `get` asks Redis (`fresh_for` zero): a command shows what the
    /// fleet holds, not what this directory last heard.
    fn open_tier(cli: &Cli, access: Access) -> Result<Tiered, String> {
        if cli.read_only {
            return Err(format!(
                "--read-only cannot be used with --redis: `{}` on the tiered store keeps the local copy in step \
                 with Redis, which writes to it; run it without --read-only, or without --redis to only read the \
                 local store",
                cli.command.name()
            ));
        }
        let config = tier_config(cli)?;
        // The tier writes even when the command only reads (the local copy takes Redis's answers).
        let access = if access == Access::Read {
            Access::Change
        } else {
            access
        };
        check_dir(cli, access)?;
        let options = TierOptions::default()
            .local(options(cli, access))
            .fresh_for(Duration::ZERO);
        Tiered::open_with(&cli.dir, config, options).map_err(|e| describe(cli, &e))
    }

    /// Waits for Redis to take everything queued; on failure says what stays queued, and returns false.
    fn flush(tier: &Tiered) -> bool {
        if let Err(e) = tier.remote().ping() {
            warn_queued(tier, &e.to_string());
            return false;
        }
        match tier.flush(FLUSH_TIMEOUT) {
            Ok(()) => true,
            Err(e) => {
                warn_queued(tier, &e.to_string());
                false
            }
        }
    }

    fn warn_queued(tier: &Tiered, why: &str) {
        eprintln!(
            "ussdb: warning: Redis did not take every change ({why}): {} mappings stay queued in the outbox of \
             {} and are sent the next time it is opened with Redis (by a server, or by any command with --redis)",
            tier.stats().outbox_depth,
            tier.local().path().display()
        );
    }

    pub fn run_tiered(cli: &Cli) -> Result<ExitCode, String> {
        let err = |e: ussdb::Error| describe(cli, &e);
        match &cli.command {
            Command::Get { user, campaign } => {
                let tier = open_tier(cli, Access::Read)?;
                let got = tier.get(user, campaign).map_err(err)?;
                if tier.stats().degraded > 0 {
                    eprintln!(
                        "ussdb: warning: Redis at {} cannot be reached; this is the local copy, which may miss \
                         another server's changes",
                        tier.remote().target()
                    );
                }
                match got {
                    Some(map) => out!("{}", ussdb::to_json_record(&map, None)),
                    None => return Ok(ExitCode::from(1)),
                }
            }
            Command::Set {
                user,
                campaign,
                variation,
                goals,
                meta,
            } => {
                if meta.is_some() {
                    return Err("--meta cannot be used with --redis: the values in Redis are the SDK's JSON \
                                without metaData"
                        .into());
                }
                let goals: Vec<&str> = goals
                    .iter()
                    .map(String::as_str)
                    .filter(|g| !g.is_empty())
                    .collect();
                let map = CampaignUserMap {
                    user_id: user.clone(),
                    campaign_key: campaign.clone(),
                    variation_name: variation.clone(),
                    goal_identifier: (!goals.is_empty()).then(|| goals.join(GOAL_DELIMITER)),
                };
                // Checked (ids, variation, size) before the store is opened, so a refused set leaves no new store.
                Batch::new().push(&map, None).map_err(err)?;
                let tier = open_tier(cli, Access::Create)?;
                tier.set(&map).map_err(err)?;
                flush(&tier);
                if let Some(kept) = tier.local().get(user, campaign).map_err(err)?
                    && kept.variation_name != map.variation_name
                {
                    eprintln!(
                        "ussdb: note: {user:?} keeps variation {:?} in {campaign:?}: the fleet keeps a user's \
                         first assignment (goals are added)",
                        kept.variation_name
                    );
                }
            }
            Command::Import {
                file,
                from_redis,
                on_error,
                ..
            } => {
                if from_redis.is_some() {
                    return Err(
                        "--from-redis copies Redis into the local store: run it without --redis"
                            .into(),
                    );
                }
                let file = file.as_deref().unwrap_or(Path::new("-"));
                return import_tiered(cli, file, *on_error);
            }
            Command::Export {
                output,
                force,
                to_redis,
            } => {
                if to_redis.is_some() {
                    return Err(
                        "--to-redis copies the local store into Redis: run it without --redis"
                            .into(),
                    );
                }
                return export_tiered(cli, output.as_deref(), *force);
            }
            Command::Stats => {
                let tier = open_tier(cli, Access::Read)?;
                // Taken before the shipper's first round, so the depth is what waited when the command started.
                let at_open = tier.stats();
                let started = Instant::now();
                let reachable = tier.remote().ping();
                let round_trip = started.elapsed();
                let now = tier.stats();
                print_stats(tier.local());
                out!("redis                {}", tier.remote().target());
                match reachable {
                    Ok(()) => out!(
                        "redis reachable      yes (PING {:.2} ms)",
                        round_trip.as_secs_f64() * 1e3
                    ),
                    Err(e) => out!("redis reachable      no ({e})"),
                }
                out!("outbox depth         {}", at_open.outbox_depth);
                out!(
                    "replay lag           {}",
                    match now.replay_lag {
                        Some(lag) => format!(
                            "{:.3} s (how long the oldest waiting change has waited)",
                            lag.as_secs_f64()
                        ),
                        None => "none (nothing waits)".to_owned(),
                    }
                );
                out!("redis errors         {}", now.redis_errors);
                out!("shipped              {}", now.shipped);
                out!(
                    "hit ratio            {:.3} ({} local hits, {} from Redis, {} misses, {} degraded)",
                    now.hit_ratio(),
                    now.local_hits,
                    now.remote_hits,
                    now.misses,
                    now.degraded
                );
                out!(
                    "(counters cover this command; a server reads its own live ones with Tiered::stats)"
                );
            }
            other => {
                return Err(format!(
                    "--redis applies to get, set, import, export and stats; `{}` works on the local store \
                     alone: run it without --redis",
                    other.name()
                ));
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// One record of the input, with where it starts.
    struct Record {
        line: u64,
        json: String,
    }

    /// Reads JSON Lines or one JSON array.
    fn read_records(input: Box<dyn Read>, name: &str) -> Result<Vec<Record>, String> {
        let mut reader = BufReader::new(input);
        let first = loop {
            let buf = reader
                .fill_buf()
                .map_err(|e| format!("reading {name} failed: {e}"))?;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break buf.get(i).copied(),
                None if buf.is_empty() => break None,
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        if first == Some(b'[') {
            let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_reader(reader)
                .map_err(|e| format!("{name} is not a JSON array of records: {e}"))?;
            return Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, raw)| Record {
                    line: i as u64 + 1,
                    json: raw.get().to_owned(),
                })
                .collect());
        }
        let mut records = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| format!("reading {name} failed at line {}: {e}", i + 1))?;
            if !line.trim().is_empty() {
                records.push(Record {
                    line: i as u64 + 1,
                    json: line,
                });
            }
        }
        Ok(records)
    }

    fn import_tiered(cli: &Cli, file: &Path, on_error: ErrorMode) -> Result<ExitCode, String> {
        let stdin = file == Path::new("-");
        let (input, name): (Box<dyn Read>, String) = if stdin {
            (Box::new(std::io::stdin().lock()), "standard input".into())
        } else {
            let f = File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
            (Box::new(f), file.display().to_string())
        };
        let records = read_records(input, &name)?;
        let unit = if records.first().is_some_and(|r| r.json.starts_with('{')) && !stdin {
            "line"
        } else {
            "record"
        };
        let tier = open_tier(cli, Access::Create)?;
        let started = Instant::now();
        let (mut imported, mut skipped) = (0u64, 0u64);
        for record in &records {
            let stored =
                ussdb::parse_json_record(&record.json).and_then(|(map, _meta)| tier.set(&map));
            if let Err(e) = stored {
                match on_error {
                    ErrorMode::Skip => {
                        skipped += 1;
                        eprintln!("ussdb: skipped {unit} {}: {e}", record.line);
                    }
                    ErrorMode::Abort => {
                        flush(&tier);
                        return Err(format!(
                            "{unit} {} of {name}: {e} (the {imported} mappings before it are imported; \
                             --on-error skip goes on past bad records)",
                            record.line
                        ));
                    }
                }
                continue;
            }
            imported += 1;
        }
        let sent = flush(&tier);
        out!(
            "imported {imported} mappings from {} records ({skipped} skipped) in {:.2} s{}",
            records.len(),
            started.elapsed().as_secs_f64(),
            if sent {
                ", all in Redis"
            } else {
                ", some still queued for Redis"
            }
        );
        if !records.is_empty() && imported == 0 {
            eprintln!(
                "ussdb: error: NOTHING IMPORTED: all {} records of {name} were bad",
                records.len()
            );
            return Ok(ExitCode::from(2));
        }
        Ok(ExitCode::SUCCESS)
    }

    fn create_output(path: &Path, force: bool) -> Result<File, String> {
        let file = if force {
            File::create(path)
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
        };
        file.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists; pass --force to overwrite it, or choose another --output",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })
    }

    /// True for the user ids a tier reserves for its own bookkeeping (the outbox watermark).
    fn reserved(user_id: &str) -> bool {
        user_id.starts_with('\0')
    }

    fn export_tiered(cli: &Cli, output: Option<&Path>, force: bool) -> Result<ExitCode, String> {
        let file = output.map(|p| create_output(p, force)).transpose()?;
        let tier = open_tier(cli, Access::Change)?;
        flush(&tier);
        let started = Instant::now();
        let mut written = 0u64;
        let mut write_all = |out: &mut dyn Write| -> Result<(), String> {
            for entry in tier.local().entries() {
                let (map, _mark) = entry.map_err(|e| describe(cli, &e))?;
                if reserved(&map.user_id) {
                    continue;
                }
                // The tier's metaData is its outbox mark, not the SDK's: it is left out.
                writeln!(out, "{}", ussdb::to_json_record(&map, None))
                    .map_err(|e| e.to_string())?;
                written += 1;
            }
            Ok(())
        };
        match (output, file) {
            (Some(path), Some(file)) => {
                let mut out = BufWriter::new(file);
                write_all(&mut out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                out.into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            _ => {
                let mut out = BufWriter::new(std::io::stdout().lock());
                if let Err(e) = write_all(&mut out) {
                    return Err(format!("cannot write to standard output: {e}"));
                }
                if let Err(e) = out.flush() {
                    stdout_failed(e);
                }
            }
        }
        eprintln!(
            "exported {written} mappings in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    }

    pub fn import_from_redis(
        cli: &Cli,
        url: &str,
        pattern: &str,
        on_error: ErrorMode,
        batch_size: usize,
    ) -> Result<ExitCode, String> {
        let config = parse_config(url)?;
        // Redis is reached before the store is created, so a wrong URL leaves no new empty store behind.
        let redis = RedisStore::connect(config).map_err(|e| e.to_string())?;
        if cli.read_only {
            return Err(
                "--read-only: `import` writes to the store; run it without --read-only".into(),
            );
        }
        check_dir(cli, Access::Create)?;
        let store = Store::open_with(&cli.dir, options(cli, Access::Create))
            .map_err(|e| describe(cli, &e))?;
        let err = |e: ussdb::Error| describe(cli, &e);
        let started = Instant::now();
        let (mut read, mut imported, mut skipped) = (0u64, 0u64, 0u64);
        let mut batch = Batch::new();
        let write = |batch: &mut Batch| -> Result<(), String> {
            store.write_batch(batch).map_err(err)?;
            batch.clear();
            Ok(())
        };
        for item in redis.scan(pattern) {
            read += 1;
            let remote = match item {
                Ok(map) => map,
                Err(e) if e.backend_kind() == Some(ussdb::BackendErrorKind::InvalidData) => {
                    skipped += 1;
                    eprintln!("ussdb: skipped {e}");
                    if on_error == ErrorMode::Abort {
                        write(&mut batch)?;
                        return Err(format!(
                            "stopped at a value that is not a mapping ({imported} mappings imported before it; \
                             --on-error skip goes on past such values)"
                        ));
                    }
                    continue;
                }
                Err(e) => {
                    write(&mut batch)?;
                    return Err(format!(
                        "reading {} failed after {imported} mappings were imported: {e}",
                        redis.target()
                    ));
                }
            };
            // Redis's variation is what the fleet served; a goal only the local copy has is kept.
            let mut merged = remote;
            if let Some(local) = store
                .get(&merged.user_id, &merged.campaign_key)
                .map_err(err)?
            {
                for goal in local.goals() {
                    merged.add_goal(goal);
                }
            }
            if let Err(e) = batch.push(&merged, None) {
                skipped += 1;
                eprintln!(
                    "ussdb: skipped key {}: {e}",
                    redis.key(&merged.user_id, &merged.campaign_key)
                );
                continue;
            }
            imported += 1;
            if batch.len() >= batch_size.max(1) {
                write(&mut batch)?;
            }
        }
        write(&mut batch)?;
        store.sync().map_err(err)?;
        out!(
            "imported {imported} mappings from {read} keys of {} ({skipped} skipped) in {:.2} s",
            redis.target(),
            started.elapsed().as_secs_f64()
        );
        if read > 0 && imported == 0 {
            eprintln!("ussdb: error: NOTHING IMPORTED: no key matching {pattern:?} held a mapping");
            return Ok(ExitCode::from(2));
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn export_to_redis(cli: &Cli, url: &str) -> Result<ExitCode, String> {
        let config = parse_config(url)?;
        check_dir(cli, Access::Read)?;
        let store = Store::open_with(&cli.dir, options(cli, Access::Read))
            .map_err(|e| describe(cli, &e))?;
        let redis = RedisStore::connect(config).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let (mut pushed, mut kept, mut failed) = (0u64, 0u64, 0u64);
        let mut push = |maps: &mut Vec<CampaignUserMap>| {
            for (map, answer) in maps.iter().zip(redis.set_merged_many(maps)) {
                match answer {
                    Ok(answer) => {
                        pushed += 1;
                        if answer.variation_name != map.variation_name {
                            kept += 1;
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!(
                            "ussdb: not pushed: {} ({e})",
                            redis.key(&map.user_id, &map.campaign_key)
                        );
                    }
                }
            }
            maps.clear();
        };
        let mut maps = Vec::with_capacity(PUSH_BATCH);
        for entry in store.entries() {
            let (map, _meta) = entry.map_err(|e| describe(cli, &e))?;
            if reserved(&map.user_id) {
                continue;
            }
            maps.push(map);
            if maps.len() >= PUSH_BATCH {
                push(&mut maps);
            }
        }
        push(&mut maps);
        let features = store.count_features().unwrap_or(0);
        out!(
            "pushed {pushed} mappings to {} in {:.2} s: {kept} keys already held another variation and kept it \
             (the first assignment wins; goals were added), {failed} failed{}",
            redis.target(),
            started.elapsed().as_secs_f64(),
            match features {
                0 => String::new(),
                n => format!(
                    "; {n} FME records are not pushed (VWO's Redis helpers store campaign mappings)"
                ),
            }
        );
        Ok(if failed > 0 {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        })
    }
}
