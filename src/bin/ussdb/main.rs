//! `ussdb`: look inside a store, change it by hand, move data in and out in the SDKs' JSON, check it, and run
//! the SDK-shaped benchmark.

mod bench;
mod interrupt;
mod progress;
mod store_dir;

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use store_dir::DirState;
use ussdb::{
    Batch, CampaignUserMap, Durability, GOAL_DELIMITER, ImportOptions, OnError, Options, Store,
};

const AFTER_HELP: &str = "\
Examples:
  ussdb --dir ./data set user-42 checkout-test Variation-1
  ussdb --dir ./data get user-42 checkout-test
  ussdb --dir ./data export --output users.jsonl
  ussdb --dir ./data verify
  ussdb --dir ./data --redis redis://127.0.0.1:6379 get user-42 checkout-test
  ussdb --dir ./data import --from-redis redis://127.0.0.1:6379 --match 'checkout-test:*'
  ussdb --dir ./data export --to-redis redis://127.0.0.1:6379

Commands that only read (get, campaigns, export, stats, verify, and delete, forget-user, compact) need an
existing store; set and import create one in a new or empty directory, never among other files.

Exit codes: 0 success; 1 nothing found (get, delete) or damage found (verify); 2 error (one line on stderr);
130 stopped by Ctrl-C (import and bench stop cleanly and say what was done).";

/// An embedded user storage for A/B-testing SDKs: inspect, edit, import, export, verify and benchmark a store.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// The store directory.
    #[arg(long, global = true, default_value = "ussdb-data")]
    dir: PathBuf,
    /// Open the store read-only, as commands that only read always do: nothing in DIR is written, so it works on
    /// a snapshot or a read-only file system, and any number of readers may share the store (not while a
    /// process writes to it). Commands that write refuse.
    #[arg(long, global = true)]
    read_only: bool,
    /// Whether --dir was given (rather than defaulted), so messages do not ask for what was passed.
    #[arg(skip)]
    dir_given: bool,
    /// When writes reach the disk.
    #[arg(long, global = true, value_enum, default_value_t = Mode::Immediate)]
    durability: Mode,
    /// Work on the fleet's tiered store: the local store at --dir in front of Redis or Valkey at URL, as a server
    /// of the fleet opens it (get, set, import, export, stats; docs/GUIDE.md, "Running a fleet"). get asks Redis
    /// and the local copy takes its answer (the local copy answers, with a warning, while Redis is down); set and
    /// import apply the fleet rule (the first assignment wins, goals unite) and wait for Redis to take the
    /// changes (they stay queued in the local outbox if it does not); export sends what waits, then writes the
    /// local copy.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        conflicts_with = "redis_cluster"
    )]
    redis: Option<String>,
    /// As --redis, for a Redis Cluster reached through these seed nodes (redis:// URLs, comma separated).
    #[arg(long, global = true, value_name = "URL,URL,...")]
    redis_cluster: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// fsync before a set returns (group commit).
    Immediate,
    /// write(2) before a set returns, fsync every 100 ms.
    Periodic,
    /// write(2) before a set returns; the OS decides when to fsync.
    Never,
}

impl Mode {
    pub fn durability(self) -> Durability {
        match self {
            Mode::Immediate => Durability::Immediate,
            Mode::Periodic => Durability::Periodic(ussdb::DEFAULT_PERIODIC_INTERVAL),
            Mode::Never => Durability::Never,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ErrorMode {
    /// Leave the bad record out, report it, go on.
    Skip,
    /// Stop at the bad record; everything before it stays imported.
    Abort,
}

#[derive(Subcommand)]
enum Command {
    /// Print a user's mapping in a campaign as JSON (exit code 1 when there is none).
    ///
    /// Example: ussdb --dir ./data get user-42 checkout-test
    Get {
        /// The user's id, as the SDK passes it.
        user: String,
        /// The campaign's key.
        campaign: String,
    },
    /// Store a user's variation in a campaign (replacing any earlier one).
    ///
    /// Example: ussdb --dir ./data set user-42 checkout-test Variation-1 --goals purchase --goals signup
    Set {
        /// The user's id, as the SDK passes it (1 to 1024 bytes).
        user: String,
        /// The campaign's key (1 to 1024 bytes).
        campaign: String,
        /// The name of the variation the user was assigned (not empty).
        variation: String,
        /// A goal already tracked; repeat the option for several (they are stored joined by `_vwo_`, as the SDKs
        /// do, so `--goals a_vwo_b` is the same as `--goals a --goals b`).
        #[arg(long, value_name = "GOAL")]
        goals: Vec<String>,
        /// The SDK's extra `metaData`, as JSON text.
        #[arg(long)]
        meta: Option<String>,
    },
    /// Erase a user's mapping in a campaign (exit code 1 when there was none).
    ///
    /// Example: ussdb --dir ./data delete user-42 checkout-test
    Delete {
        /// The user's id.
        user: String,
        /// The campaign's key.
        campaign: String,
    },
    /// Erase every mapping and FME record of a user (e.g. for a privacy request) and print how many there were.
    ///
    /// Example: ussdb --dir ./data forget-user user-42
    ForgetUser {
        /// The user's id.
        user: String,
    },
    /// Print every mapping of a user as JSON Lines, sorted by campaign.
    ///
    /// Example: ussdb --dir ./data campaigns user-42
    Campaigns {
        /// The user's id.
        user: String,
    },
    /// Import user storage data: JSON Lines or one JSON array, in any SDK's key style.
    ///
    /// Reads camelCase (userId, campaignKey, variationName, goalIdentifier), Python's goalIdentifiers, Ruby's
    /// snake_case, goal lists as strings or arrays, and keeps a metaData value as JSON. A later record of the same
    /// user and campaign wins. Bad records are reported with their line number; with `--on-error skip` the exit
    /// code is 2 when no record at all could be imported. Ctrl-C stops after the line being read and prints what
    /// was imported (exit code 130).
    /// Lines with a featureKey are the FME SDKs' records, as are objects keyed by featureKey_userId (or
    /// featureKey:userId) storage keys.
    ///
    /// Example: ussdb --dir ./data --durability never import users.jsonl --on-error skip
    ///
    /// With --from-redis URL, reads a Redis keyspace written by VWO's Redis helpers (keys campaignKey:userId, the
    /// SDK's JSON as values) instead of a file, with SCAN (never KEYS, so the server keeps serving). A value that
    /// is not a mapping is reported with its key; the import stops there, or with `--on-error skip` goes on past
    /// it. Redis's variation wins over a local copy's, and goal lists unite.
    ///
    /// Example: ussdb --dir ./data import --from-redis redis://10.0.0.5:6379 --match 'checkout-test:*'
    Import {
        /// The file to read, or `-` for standard input.
        #[arg(required_unless_present = "from_redis", conflicts_with = "from_redis")]
        file: Option<PathBuf>,
        /// Copy the mappings of this Redis (a redis:// URL; several, comma separated, for a Cluster's seed nodes)
        /// into the store.
        #[arg(long, value_name = "URL")]
        from_redis: Option<String>,
        /// With --from-redis: only keys matching this glob (SCAN MATCH), e.g. 'checkout-test:*'.
        #[arg(
            long = "match",
            value_name = "PATTERN",
            requires = "from_redis",
            default_value = "*"
        )]
        pattern: String,
        /// What a bad record does: skip it, or stop there (everything before it stays imported).
        #[arg(long, value_enum, default_value_t = ErrorMode::Abort)]
        on_error: ErrorMode,
        /// Mappings written per batch (one fsync each with --durability immediate).
        #[arg(long, default_value_t = 8192)]
        batch_size: usize,
    },
    /// Export every mapping as camelCase JSON Lines (metaData as JSON when present), and every FME record,
    /// which import reads back.
    ///
    /// Example: ussdb --dir ./data export --output users.jsonl
    ///
    /// With --to-redis URL, copies every mapping into Redis instead, as VWO's Redis helpers lay it out, under the
    /// fleet rule: a key Redis already holds keeps its variation (the first assignment wins) and gains the local
    /// goals, so pushing into a keyspace a fleet already serves never reassigns a user.
    ///
    /// Example: ussdb --dir ./data export --to-redis redis://10.0.0.5:6379
    Export {
        /// Write here instead of standard output (refused if the file exists, unless --force).
        #[arg(long, short, conflicts_with = "to_redis")]
        output: Option<PathBuf>,
        /// Copy the mappings into this Redis (a redis:// URL; several, comma separated, for a Cluster's seed
        /// nodes).
        #[arg(long, value_name = "URL")]
        to_redis: Option<String>,
        /// Overwrite the --output file if it exists.
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// Print the store's counters.
    ///
    /// Example: ussdb --dir ./data stats
    Stats,
    /// Read every record, check checksums and that the index agrees with the log; exit code 1 on damage.
    ///
    /// A store that cannot be opened because of damage is scanned file by file instead, to list all of it.
    ///
    /// Example: ussdb --dir ./data verify
    Verify,
    /// Copy the store into DEST, a new or empty directory: a consistent copy (every write acknowledged before the
    /// command, as one prefix of the log) with the store's manifest and SEED, which opens without a scan.
    ///
    /// Sealed segments are hard-linked when DEST is on the same file system, copied otherwise. Like the commands
    /// that write, it needs the store to itself; a running server makes its backups with `Store::backup`. Check
    /// the copy with `ussdb --dir DEST verify`.
    ///
    /// Example: ussdb --dir ./data backup ./backups/2026-11-28
    Backup {
        /// The directory to copy into (created if missing; must be empty).
        dest: PathBuf,
    },
    /// Rewrite live records out of segments with dead ones and remove those segments.
    ///
    /// Example: ussdb --dir ./data compact
    Compact,
    /// Salvage a damaged store so that it opens: keep every intact record, drop damaged ones, and list exactly
    /// what was lost (the keys where readable, file and offset otherwise). Exit code 1 when something was lost.
    ///
    /// A key whose newest record is damaged is erased, so that no older value or deleted mapping comes back. The
    /// store must not be open elsewhere. Take a copy first if the damaged bytes matter to you.
    ///
    /// Example: ussdb --dir ./data repair
    Repair,
    /// Run a simulated SDK workload on a fresh store and print throughput and latency.
    ///
    /// The store is a new directory DIR/bench-PID (created, so never one that held anything) and is removed
    /// afterwards (unless --keep), as is DIR itself if the bench created it. Ctrl-C stops the bench and removes it.
    ///
    /// Example: ussdb bench --users 100000 --threads 4 --durability periodic
    Bench(bench::Args),
    #[command(flatten)]
    Feature(feature::Command),
}

impl Command {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Get { .. } => "get",
            Command::Set { .. } => "set",
            Command::Delete { .. } => "delete",
            Command::ForgetUser { .. } => "forget-user",
            Command::Campaigns { .. } => "campaigns",
            Command::Import { .. } => "import",
            Command::Export { .. } => "export",
            Command::Stats => "stats",
            Command::Verify => "verify",
            Command::Backup { .. } => "backup",
            Command::Compact => "compact",
            Command::Repair => "repair",
            Command::Bench(_) => "bench",
            Command::Feature(command) => command.name(),
        }
    }
}

/// `println!` that does not panic when stdout is closed: `ussdb export | head` ends quietly, as with other
/// tools, with the exit status a shell reports for SIGPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            stdout_failed(e);
        }
    }};
}

mod feature;
mod fleet;

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln!("ussdb: cannot write to standard output: {e}");
        std::process::exit(2);
    }
    std::process::exit(141)
}

/// Sends the library's warnings (a torn write cut off on open, a failed background fsync) to stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_lowercase();
            eprintln!("ussdb: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(log::LevelFilter::Warn);
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.dir_given = matches.value_source("dir") != Some(ValueSource::DefaultValue);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ussdb: {e}");
            ExitCode::from(2)
        }
    }
}

/// The one-line message of a library error, with what to do about it where the error alone does not say.
fn describe(cli: &Cli, e: &ussdb::Error) -> String {
    match e {
        ussdb::Error::Locked { path } => format!(
            "the store at {} is in use by another process (lock {}): a process that writes to a store in the \
             single-process mode has it to itself (commands join a store held in the multi-process mode, \
             `Options::shared`, but not with --read-only). Stop that process (or close the store in it) and run \
             this again; to look at a live store, have its process copy it with Store::backup and point --dir at \
             the copy (commands that only read, or --read-only, share a store with other readers)",
            cli.dir.display(),
            path.display()
        ),
        e => e.to_string(),
    }
}

/// How a command uses the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads only: opened read-only (a shared lock, nothing in the directory written), so any number of such
    /// commands can run at once and a store on a read-only file system (a snapshot) can be looked at.
    Read,
    /// Changes an existing store.
    Change,
    /// Writes, creating the store in a new or empty directory.
    Create,
}

/// Opens the store. Without background compaction: a one-shot command should not start rewriting segments
/// behind the user's back (`ussdb compact` does it on request).
fn open(cli: &Cli, access: Access) -> Result<Store, String> {
    if cli.read_only && access != Access::Read {
        return Err(format!(
            "--read-only: `{}` writes to the store; run it without --read-only",
            cli.command.name()
        ));
    }
    check_dir(cli, access)?;
    match Store::open_with(&cli.dir, options(cli, access)) {
        // Worker processes of a web server (the Python and Node bindings' default) may hold the store in the
        // multi-process mode: then join it, so that a command works beside them and sees what they wrote. If
        // joining fails too, the first refusal is the one to explain.
        Err(e @ (ussdb::Error::Locked { .. } | ussdb::Error::LockMode { .. }))
            if !cli.read_only =>
        {
            Store::open_with(&cli.dir, options(cli, access).read_only(false).shared(true))
                .map_err(|_| describe(cli, &e))
        }
        other => other.map_err(|e| describe(cli, &e)),
    }
}

/// Refuses what `access` must not do to the directory: read where there is no store, or create a store among
/// other files.
fn check_dir(cli: &Cli, access: Access) -> Result<(), String> {
    let state = store_dir::state(&cli.dir)?;
    match (&state, access) {
        (DirState::Store, _) | (DirState::Missing | DirState::Empty, Access::Create) => {}
        (DirState::Other { example }, Access::Create) => {
            return Err(format!(
                "{} holds other files (such as {example}) and no ussdb store; refusing to make a store among \
                 them: choose a new or empty directory with --dir",
                cli.dir.display()
            ));
        }
        (DirState::NotADirectory, Access::Create) => {
            return Err(format!("{} is not a directory", cli.dir.display()));
        }
        (_, Access::Read | Access::Change) => return Err(no_store(cli, &state)),
    }
    Ok(())
}

fn options(cli: &Cli, access: Access) -> Options {
    Options::default()
        .durability(cli.durability.durability())
        .auto_compaction(false)
        .read_only(access == Access::Read)
}

fn no_store(cli: &Cli, state: &DirState) -> String {
    let why = match state {
        DirState::Missing => "it does not exist",
        DirState::Empty => "the directory is empty",
        DirState::Other { .. } => "the directory holds neither a SEED file nor a segment (*.seg)",
        DirState::NotADirectory => "it is not a directory",
        DirState::Store => "",
    };
    let hint = if cli.dir_given {
        ""
    } else {
        " (that is the default; pass --dir DIR to choose the store)"
    };
    format!("no store at {}{hint}: {why}", cli.dir.display())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    if cli.redis.is_some() || cli.redis_cluster.is_some() {
        return fleet::run_tiered(&cli);
    }
    let err = |e: ussdb::Error| describe(&cli, &e);
    match &cli.command {
        Command::Get { user, campaign } => match open(&cli, Access::Read)?
            .get_with_meta(user, campaign)
            .map_err(err)?
        {
            Some((map, meta)) => out!("{}", ussdb::to_json_record(&map, meta.as_deref())),
            None => return Ok(ExitCode::from(1)),
        },
        Command::Set {
            user,
            campaign,
            variation,
            goals,
            meta,
        } => {
            if let Some(meta) = meta {
                serde_json::from_str::<&serde_json::value::RawValue>(meta)
                    .map_err(|e| format!("--meta is not JSON: {e}"))?;
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
            let mut batch = Batch::new();
            batch.push(&map, meta.as_deref()).map_err(err)?;
            open(&cli, Access::Create)?
                .write_batch(&batch)
                .map_err(err)?;
        }
        Command::Delete { user, campaign } => {
            if !open(&cli, Access::Change)?
                .delete(user, campaign)
                .map_err(err)?
            {
                return Ok(ExitCode::from(1));
            }
        }
        Command::ForgetUser { user } => {
            out!(
                "{}",
                open(&cli, Access::Change)?.forget_user(user).map_err(err)?
            )
        }
        Command::Campaigns { user } => {
            for map in open(&cli, Access::Read)?.campaigns_of(user).map_err(err)? {
                out!("{}", ussdb::to_json_record(&map, None));
            }
        }
        Command::Import {
            from_redis: Some(url),
            pattern,
            on_error,
            batch_size,
            ..
        } => return fleet::import_from_redis(&cli, url, pattern, *on_error, *batch_size),
        Command::Import {
            file,
            on_error,
            batch_size,
            ..
        } => {
            let file = file.as_deref().unwrap_or(Path::new("-"));
            return import(&cli, file, *on_error, *batch_size);
        }
        Command::Export {
            to_redis: Some(url),
            ..
        } => return fleet::export_to_redis(&cli, url),
        Command::Export { output, force, .. } => export(&cli, output.as_deref(), *force)?,
        Command::Stats => {
            let store = open(&cli, Access::Read)?;
            print_stats(&store);
            feature::print_stats(&store)?;
        }
        Command::Verify => return verify(&cli),
        Command::Compact => compact(&cli)?,
        Command::Repair => return repair(&cli),
        Command::Backup { dest } => backup(&cli, dest)?,
        Command::Bench(args) => {
            return Ok(match bench::run(&cli.dir, cli.durability, args)? {
                bench::Outcome::Done => ExitCode::SUCCESS,
                bench::Outcome::Interrupted => ExitCode::from(interrupt::EXIT_CODE),
            });
        }
        Command::Feature(command) => return feature::run(&cli, command),
    }
    Ok(ExitCode::SUCCESS)
}

fn import(
    cli: &Cli,
    file: &Path,
    on_error: ErrorMode,
    batch_size: usize,
) -> Result<ExitCode, String> {
    let options = ImportOptions::default()
        .on_error(match on_error {
            ErrorMode::Skip => OnError::Skip,
            ErrorMode::Abort => OnError::Abort,
        })
        .batch_size(batch_size);
    // The input is opened first, so that a mistyped file name does not leave a new empty store behind.
    let stdin = file == Path::new("-");
    let (input, len): (Box<dyn Read>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        if file.is_dir() {
            return Err(format!(
                "{} is a directory; give a file (JSON Lines or a JSON array), or - for standard input",
                file.display()
            ));
        }
        let input = File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let len = input
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (Box::new(input), len)
    };
    let name = if stdin {
        "standard input".to_owned()
    } else {
        file.display().to_string()
    };
    interrupt::catch();
    let store = open(cli, Access::Create)?;
    let started = Instant::now();
    let mut input = interrupt::UntilInterrupted::new(input);
    let bar = progress::bar("import", len, true);
    let result = store.import_json_with_progress(&mut input, &options, |b| bar.set_position(b));
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(ussdb::Error::Import { at, imported, .. }) if input.stopped() => {
            // Ctrl-C inside a JSON array: the cut ends the array early, and everything before it is stored.
            store.sync().map_err(|e| describe(cli, &e))?;
            eprintln!(
                "ussdb: interrupted by Ctrl-C at {at} of {name}: the {imported} mappings before it are imported, \
                 none after it"
            );
            return Ok(ExitCode::from(interrupt::EXIT_CODE));
        }
        Err(ussdb::Error::Io { op, path, source }) if path == Path::new("<input>") => {
            return Err(format!("{op} failed for {name}: {source}"));
        }
        Err(e) => return Err(describe(cli, &e)),
    };
    store.sync().map_err(|e| describe(cli, &e))?;
    let secs = started.elapsed().as_secs_f64();
    for skip in &report.skips {
        eprintln!("ussdb: skipped {}: {}", skip.position, skip.reason);
    }
    if report.skipped > report.skips.len() as u64 {
        eprintln!(
            "ussdb: ... and {} more skipped records",
            report.skipped - report.skips.len() as u64
        );
    }
    out!(
        "imported {} mappings from {} records ({} skipped) in {secs:.2} s ({:.0} mappings/s){}",
        report.imported,
        report.records,
        report.skipped,
        report.imported as f64 / secs.max(1e-9),
        match report.features {
            0 => String::new(),
            n => format!("; {n} of them FME records"),
        }
    );
    if input.stopped() {
        let lines = input.lines();
        eprintln!(
            "ussdb: interrupted by Ctrl-C after line {lines} of {name}: the records of lines 1 to {lines} are \
             imported (or listed as skipped above), none after; the rest starts at line {}",
            lines + 1
        );
        return Ok(ExitCode::from(interrupt::EXIT_CODE));
    }
    if report.records > 0 && report.imported == 0 && report.skipped == report.records {
        eprintln!(
            "ussdb: error: NOTHING IMPORTED: all {} records of {name} were bad (see the reasons above)",
            report.records
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn export(cli: &Cli, output: Option<&Path>, force: bool) -> Result<(), String> {
    let store = open(cli, Access::Read)?;
    let err = |e: ussdb::Error| describe(cli, &e);
    let file = match output {
        Some(path) if force => Some(File::create(path)),
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path),
        ),
        None => None,
    };
    let bar = progress::bar("export", Some(store.stats().mappings), false);
    let started = Instant::now();
    let written = match (output, file) {
        (Some(path), Some(file)) => {
            let file = file.map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "{} exists; pass --force to overwrite it, or choose another --output",
                    path.display()
                ),
                _ => format!("cannot create {}: {e}", path.display()),
            })?;
            let mut out = BufWriter::new(file);
            let n = store
                .export_json_with_progress(&mut out, |n| bar.set_position(n))
                .map_err(err)?;
            out.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            n
        }
        _ => {
            let stdout = std::io::stdout().lock();
            let n = match store.export_json_with_progress(stdout, |n| bar.set_position(n)) {
                Ok(n) => n,
                Err(ussdb::Error::Io { source, .. }) => stdout_failed(source),
                Err(e) => return Err(err(e)),
            };
            if let Err(e) = std::io::stdout().flush() {
                stdout_failed(e);
            }
            n
        }
    };
    bar.finish_and_clear();
    eprintln!(
        "exported {written} mappings in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn verify(cli: &Cli) -> Result<ExitCode, String> {
    let state = store_dir::state(&cli.dir)?;
    if state != DirState::Store {
        return Err(no_store(cli, &state));
    }
    // The total is known once the store is open (or its files listed); the closure sets it.
    let bar = progress::bar("verify", Some(0), true);
    let tick = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let opened = Store::open_with(&cli.dir, options(cli, Access::Read));
    let report = match opened {
        Ok(store) => store
            .verify_with_progress(tick)
            .map_err(|e| describe(cli, &e))?,
        Err(e) if e.is_corruption() => {
            bar.suspend(|| {
                eprintln!("ussdb: the store does not open ({e}); checking its files one by one")
            });
            ussdb::verify_dir_with_progress(&cli.dir, tick).map_err(|e| describe(cli, &e))?
        }
        Err(e) => return Err(describe(cli, &e)),
    };
    bar.finish_and_clear();
    for damage in &report.damage {
        out!("damage: {damage}");
    }
    for hint in &report.hint_problems {
        out!("hint: {hint}");
    }
    if let Some(torn) = &report.torn_tail {
        out!("torn write: {torn}");
    }
    out!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn backup(cli: &Cli, dest: &Path) -> Result<(), String> {
    // Not read-only: a backup first makes everything acknowledged durable, which is a write.
    let store = open(cli, Access::Change)?;
    let started = Instant::now();
    let report = store.backup(dest).map_err(|e| describe(cli, &e))?;
    out!(
        "backed up {} in {:.2} s to {}: {} bytes of segments, {} files hard-linked, {} copied",
        plural(report.segments, "segment", "segments"),
        started.elapsed().as_secs_f64(),
        dest.display(),
        report.bytes,
        report.linked,
        report.copied
    );
    Ok(())
}

fn repair(cli: &Cli) -> Result<ExitCode, String> {
    let state = store_dir::state(&cli.dir)?;
    if state != DirState::Store {
        return Err(no_store(cli, &state));
    }
    let report =
        Store::repair(&cli.dir, options(cli, Access::Change)).map_err(|e| describe(cli, &e))?;
    for lost in &report.lost {
        out!("lost: {lost}");
    }
    match (report.rewritten, report.lost.len()) {
        (false, _) => out!(
            "ok: nothing damaged, nothing changed ({} records)",
            report.records
        ),
        (true, 0) => out!("rewritten: {} mappings kept, nothing lost", report.kept),
        (true, n) => out!(
            "REPAIRED: {} kept, {} lost (listed above); the store opens again",
            plural(report.kept, "record", "records"),
            plural(n as u64, "piece of damage", "pieces of damage")
        ),
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn compact(cli: &Cli) -> Result<(), String> {
    let store = open(cli, Access::Change)?;
    let before = store.stats();
    let bar = progress::bar("compact", None, false);
    let started = Instant::now();
    let result = store.compact();
    bar.finish_and_clear();
    result.map_err(|e| describe(cli, &e))?;
    let after = store.stats();
    out!(
        "compacted in {:.2} s: {} -> {} bytes on disk ({} reclaimed), {} -> {}, space amplification {:.2} -> {:.2}",
        started.elapsed().as_secs_f64(),
        before.disk_bytes,
        after.disk_bytes,
        before.disk_bytes.saturating_sub(after.disk_bytes),
        before.segments,
        plural(after.segments, "segment", "segments"),
        before.space_amplification,
        after.space_amplification
    );
    Ok(())
}

fn print_stats(store: &Store) {
    let s = store.stats();
    out!("mappings             {}", s.mappings);
    out!("segments             {}", s.segments);
    out!("disk bytes           {}", s.disk_bytes);
    out!("live bytes           {}", s.live_bytes);
    out!("dead bytes           {}", s.dead_bytes);
    out!("space amplification  {:.2}", s.space_amplification);
    out!("index heap bytes     {}", s.index_heap_bytes);
    out!("hint files           {}", s.hint_files);
    out!(
        "index loaded         {}",
        if s.index_loaded {
            "from the index saved at the last clean close"
        } else {
            "rebuilt from hint files and segments"
        }
    );
}
