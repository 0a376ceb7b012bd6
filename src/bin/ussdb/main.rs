//! `ussdb`: look inside a store, change it by hand, move data in and out in the SDKs' JSON, check it, and run
//! the SDK-shaped benchmark.

mod bench;
mod progress;

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use ussdb::{CampaignUserMap, Durability, ImportOptions, OnError, Options, Store};

const AFTER_HELP: &str = "\
Examples:
  ussdb --dir ./data set user-42 checkout-test Variation-1
  ussdb --dir ./data get user-42 checkout-test
  ussdb --dir ./data export --output users.jsonl
  ussdb --dir ./data verify

Exit codes: 0 success; 1 nothing found (get, delete) or damage found (verify); 2 error (one line on stderr).";

/// An embedded user storage for A/B-testing SDKs: inspect, edit, import, export, verify and benchmark a store.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// The store directory.
    #[arg(long, global = true, default_value = "ussdb-data")]
    dir: PathBuf,
    /// When writes reach the disk.
    #[arg(long, global = true, value_enum, default_value_t = Mode::Immediate)]
    durability: Mode,
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
            Mode::Periodic => Durability::Periodic(Duration::from_millis(100)),
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
    Get { user: String, campaign: String },
    /// Store a user's variation in a campaign (replacing any earlier one).
    ///
    /// Example: ussdb --dir ./data set user-42 checkout-test Variation-1 --goals purchase_vwo_signup
    Set {
        user: String,
        campaign: String,
        variation: String,
        /// Goals already tracked, joined by `_vwo_`.
        #[arg(long)]
        goals: Option<String>,
        /// The SDK's extra `metaData`, as JSON text.
        #[arg(long)]
        meta: Option<String>,
    },
    /// Erase a user's mapping in a campaign (exit code 1 when there was none).
    ///
    /// Example: ussdb --dir ./data delete user-42 checkout-test
    Delete { user: String, campaign: String },
    /// Erase every mapping and FME record of a user (e.g. for a privacy request) and print how many there were.
    ///
    /// Example: ussdb --dir ./data forget-user user-42
    ForgetUser { user: String },
    /// Print every mapping of a user as JSON Lines, sorted by campaign.
    ///
    /// Example: ussdb --dir ./data campaigns user-42
    Campaigns { user: String },
    /// Import user storage data: JSON Lines or one JSON array, in any SDK's key style.
    ///
    /// Reads camelCase (userId, campaignKey, variationName, goalIdentifier), Python's goalIdentifiers, Ruby's
    /// snake_case, goal lists as strings or arrays, and keeps a metaData value as JSON. A later record of the same
    /// user and campaign wins. Bad records are reported with their line number. Lines with a featureKey are the
    /// FME SDKs' records, as are objects keyed by featureKey_userId (or featureKey:userId) storage keys.
    ///
    /// Example: ussdb --dir ./data --durability never import users.jsonl --on-error skip
    Import {
        /// The file to read, or `-` for standard input.
        file: PathBuf,
        /// What a bad record does: skip it, or stop there (everything before it stays imported).
        #[arg(long, value_enum, default_value_t = ErrorMode::Abort)]
        on_error: ErrorMode,
        /// Mappings written per batch (one fsync each with --durability immediate).
        #[arg(long, default_value_t = 8192)]
        batch_size: usize,
    },
    /// Export every mapping as camelCase JSON Lines (metaData as JSON when present), then every FME record,
    /// which import reads back.
    ///
    /// Example: ussdb --dir ./data export --output users.jsonl
    Export {
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
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
    /// Rewrite live records out of segments with dead ones and remove those segments.
    ///
    /// Example: ussdb --dir ./data compact
    Compact,
    /// Run a simulated SDK workload on a fresh store in DIR/bench and print throughput and latency.
    ///
    /// Example: ussdb bench --users 100000 --threads 4 --durability periodic
    Bench(bench::Args),
    #[command(flatten)]
    Feature(feature::Command),
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ussdb: {e}");
            ExitCode::from(2)
        }
    }
}

/// Opens the store, creating it. Without background compaction: a one-shot command should not start rewriting
/// segments behind the user's back (`ussdb compact` does it on request).
fn open(cli: &Cli) -> ussdb::Result<Store> {
    Store::open_with(
        &cli.dir,
        Options::default()
            .durability(cli.durability.durability())
            .auto_compaction(false),
    )
}

/// Opens an existing store: commands that only read should not create an empty one where a path was mistyped.
fn open_existing(cli: &Cli) -> Result<Store, String> {
    if !cli.dir.is_dir() {
        return Err(format!(
            "no store at {} (pass --dir DIR to choose one)",
            cli.dir.display()
        ));
    }
    open(cli).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let err = |e: ussdb::Error| e.to_string();
    match &cli.command {
        Command::Get { user, campaign } => match open_existing(&cli)?
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
            let map = CampaignUserMap {
                user_id: user.clone(),
                campaign_key: campaign.clone(),
                variation_name: variation.clone(),
                goal_identifier: goals.clone(),
            };
            open(&cli)
                .map_err(err)?
                .set_with_meta(&map, meta.as_deref())
                .map_err(err)?;
        }
        Command::Delete { user, campaign } => {
            if !open_existing(&cli)?.delete(user, campaign).map_err(err)? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::ForgetUser { user } => {
            out!("{}", open_existing(&cli)?.forget_user(user).map_err(err)?)
        }
        Command::Campaigns { user } => {
            for map in open_existing(&cli)?.campaigns_of(user).map_err(err)? {
                out!("{}", ussdb::to_json_record(&map, None));
            }
        }
        Command::Import {
            file,
            on_error,
            batch_size,
        } => import(&cli, file, *on_error, *batch_size)?,
        Command::Export { output } => export(&cli, output.as_deref())?,
        Command::Stats => {
            let store = open_existing(&cli)?;
            print_stats(&store);
            feature::print_stats(&store)?;
        }
        Command::Verify => return verify(&cli),
        Command::Compact => compact(&cli)?,
        Command::Bench(args) => bench::run(&cli.dir, cli.durability, args).map_err(err)?,
        Command::Feature(command) => return feature::run(&cli, command),
    }
    Ok(ExitCode::SUCCESS)
}

fn import(cli: &Cli, file: &Path, on_error: ErrorMode, batch_size: usize) -> Result<(), String> {
    let options = ImportOptions::default()
        .on_error(match on_error {
            ErrorMode::Skip => OnError::Skip,
            ErrorMode::Abort => OnError::Abort,
        })
        .batch_size(batch_size);
    let store = open(cli).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let report = if file == Path::new("-") {
        let bar = progress::bar("import", None, true);
        let report = store
            .import_json_with_progress(std::io::stdin().lock(), &options, |b| bar.set_position(b));
        bar.finish_and_clear();
        report
    } else {
        let input = File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let len = input.metadata().map(|m| m.len()).ok();
        let bar = progress::bar("import", len, true);
        let report = store.import_json_with_progress(
            BufReader::with_capacity(1 << 16, input),
            &options,
            |b| bar.set_position(b),
        );
        bar.finish_and_clear();
        report
    };
    let report = report.map_err(|e| e.to_string())?;
    store.sync().map_err(|e| e.to_string())?;
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
    Ok(())
}

fn export(cli: &Cli, output: Option<&Path>) -> Result<(), String> {
    let store = open_existing(cli)?;
    let bar = progress::bar("export", Some(store.stats().mappings), false);
    let started = Instant::now();
    let written = match output {
        Some(path) => {
            let file =
                File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = BufWriter::new(file);
            let n = store
                .export_json_with_progress(&mut out, |n| bar.set_position(n))
                .map_err(|e| e.to_string())?;
            out.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            n
        }
        None => {
            let stdout = std::io::stdout().lock();
            let n = match store.export_json_with_progress(stdout, |n| bar.set_position(n)) {
                Ok(n) => n,
                Err(ussdb::Error::Io { source, .. }) => stdout_failed(source),
                Err(e) => return Err(e.to_string()),
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
    if !cli.dir.is_dir() {
        return Err(format!("no store at {}", cli.dir.display()));
    }
    // The total is known once the store is open (or its files listed); the closure sets it.
    let bar = progress::bar("verify", Some(0), true);
    let tick = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = match open(cli) {
        Ok(store) => store
            .verify_with_progress(tick)
            .map_err(|e| e.to_string())?,
        Err(e) if e.is_corruption() => {
            bar.suspend(|| {
                eprintln!("ussdb: the store does not open ({e}); checking its files one by one")
            });
            ussdb::verify_dir_with_progress(&cli.dir, tick).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
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

fn compact(cli: &Cli) -> Result<(), String> {
    let store = open_existing(cli)?;
    let before = store.stats();
    let bar = progress::bar("compact", None, false);
    let started = Instant::now();
    let result = store.compact();
    bar.finish_and_clear();
    result.map_err(|e| e.to_string())?;
    let after = store.stats();
    out!(
        "compacted in {:.2} s: {} -> {} bytes on disk ({} reclaimed), {} -> {} segments, space amplification {:.2} -> {:.2}",
        started.elapsed().as_secs_f64(),
        before.disk_bytes,
        after.disk_bytes,
        before.disk_bytes.saturating_sub(after.disk_bytes),
        before.segments,
        after.segments,
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
}
