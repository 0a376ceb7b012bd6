//! `ussdb`: look inside a store, change it by hand, and run the SDK-shaped benchmark.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ussdb::{CampaignUserMap, Durability, Options, Store};

/// An embedded user storage for A/B-testing SDKs.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The store directory (created if missing).
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

#[derive(Subcommand)]
enum Command {
    /// Store a user's variation in a campaign.
    ///
    /// Example: ussdb set user-42 checkout-test Variation-1 --goals purchase_vwo_signup
    Set {
        user: String,
        campaign: String,
        variation: String,
        /// Goals already tracked, joined by `_vwo_`.
        #[arg(long)]
        goals: Option<String>,
    },
    /// Print a user's mapping in a campaign as JSON (exit code 1 when there is none).
    ///
    /// Example: ussdb get user-42 checkout-test
    Get { user: String, campaign: String },
    /// Erase a user's mapping in a campaign (exit code 1 when there was none).
    ///
    /// Example: ussdb delete user-42 checkout-test
    Delete { user: String, campaign: String },
    /// Erase every mapping of a user and print how many there were.
    ///
    /// Example: ussdb forget-user user-42
    ForgetUser { user: String },
    /// Print every mapping of a user as JSON Lines.
    ///
    /// Example: ussdb campaigns user-42
    Campaigns { user: String },
    /// Print the store's counters.
    ///
    /// Example: ussdb --dir ./data stats
    Stats,
    /// Run a simulated SDK workload on a fresh store in DIR/bench and print throughput and latency.
    ///
    /// Example: ussdb bench --users 100000 --threads 4 --durability periodic
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ussdb: {e}");
            ExitCode::from(2)
        }
    }
}

fn open(cli: &Cli) -> ussdb::Result<Store> {
    Store::open_with(
        &cli.dir,
        Options::default().durability(cli.durability.durability()),
    )
}

fn json(map: &CampaignUserMap) -> String {
    serde_json::to_string(map).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

fn run(cli: Cli) -> ussdb::Result<ExitCode> {
    match &cli.command {
        Command::Set {
            user,
            campaign,
            variation,
            goals,
        } => {
            let map = CampaignUserMap {
                user_id: user.clone(),
                campaign_key: campaign.clone(),
                variation_name: variation.clone(),
                goal_identifier: goals.clone(),
            };
            open(&cli)?.set(&map)?;
        }
        Command::Get { user, campaign } => match open(&cli)?.get(user, campaign)? {
            Some(map) => println!("{}", json(&map)),
            None => return Ok(ExitCode::from(1)),
        },
        Command::Delete { user, campaign } => {
            if !open(&cli)?.delete(user, campaign)? {
                return Ok(ExitCode::from(1));
            }
        }
        Command::ForgetUser { user } => println!("{}", open(&cli)?.forget_user(user)?),
        Command::Campaigns { user } => {
            for map in open(&cli)?.campaigns_of(user)? {
                println!("{}", json(&map));
            }
        }
        Command::Stats => print_stats(&open(&cli)?),
        Command::Bench(args) => bench::run(&cli.dir, cli.durability, args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats(store: &Store) {
    let s = store.stats();
    println!("mappings             {}", s.mappings);
    println!("segments             {}", s.segments);
    println!("disk bytes           {}", s.disk_bytes);
    println!("live bytes           {}", s.live_bytes);
    println!("dead bytes           {}", s.dead_bytes);
    println!("space amplification  {:.2}", s.space_amplification);
    println!("index heap bytes     {}", s.index_heap_bytes);
}
