//! [`Tiered`]: a local [`Store`] in front of a [`RedisStore`], itself a User Storage Service.
//!
//! * `get`: a local copy that is fresh answers with no network; otherwise Redis answers and the local copy takes
//!   its answer. While Redis cannot be reached, the local copy answers (or `None` when there is none).
//! * `set`: applies the fleet rule to the local copy and appends it to the local log, marked as waiting for
//!   Redis; a background thread ships waiting mappings to Redis in order, and the local copy then takes Redis's
//!   answer, so a server that lost a race for a first assignment returns the winner from then on.
//!
//! The outbox lives in the local store itself, at no extra record per set: a mapping written with changes Redis
//! has not seen carries a sequence number in its `metaData` (`{"ussdbOutbox":N}`), in the same record, so the
//! mark is exactly as durable as the data. One reserved record, the watermark (user id `"\0ussdb"`), says below
//! which number everything has been shipped; the shipper advances it as it goes. Reopening walks the store once
//! and queues, in sequence order, every mapping marked at or above the watermark. Shipping something twice is
//! harmless: the fleet rule is idempotent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::{BACKEND, RedisConfig};
use super::outbox::{MARK_PREFIX, OutKey, Outbox, PassThrough, Queue, mark_text};

type FreshTable = HashMap<u64, Instant, std::hash::BuildHasherDefault<PassThrough>>;
use super::redis::{RedisStore, check_ids};
use super::value::first_wins;
use crate::codec;
use crate::{BackendErrorKind, CampaignUserMap, Error, Options, Result, Store, UserStorageService};

/// What starts the user ids a tier reserves for itself in the local store.
const RESERVED: char = '\0';
/// The watermark record: user id, campaign key. Its variation field holds the sequence number below which every
/// marked mapping has been shipped.
const WATERMARK: (&str, &str) = ("\0ussdb", "outbox-watermark");
/// Shards of the table of when each local copy was last confirmed by Redis.
const FRESH_SHARDS: usize = 16;

/// How long a local copy is trusted without asking Redis, by default. See [`TierOptions::fresh_for`].
pub const DEFAULT_FRESH_FOR: Duration = Duration::from_secs(5);

/// Options of a [`Tiered`] store.
#[derive(Clone, Debug)]
pub struct TierOptions {
    local: Options,
    fresh_for: Duration,
    ship_batch: usize,
    retry_max: Duration,
}

impl Default for TierOptions {
    fn default() -> TierOptions {
        TierOptions {
            local: Options::default(),
            fresh_for: DEFAULT_FRESH_FOR,
            ship_batch: 256,
            retry_max: Duration::from_secs(2),
        }
    }
}

impl TierOptions {
    /// The local store's options (durability, segment size, compaction).
    pub fn local(mut self, options: Options) -> TierOptions {
        self.local = options;
        self
    }

    /// How long a local copy confirmed by Redis (read from it, or answered by it after a shipment) is used without
    /// asking Redis again (default [`DEFAULT_FRESH_FOR`]). This bounds how long another server's write (a goal it
    /// tracked) can stay invisible here; a variation confirmed by Redis never changes, so it bounds only goal
    /// lists. Zero asks Redis on every `get` that is not waiting to be shipped.
    pub fn fresh_for(mut self, fresh_for: Duration) -> TierOptions {
        self.fresh_for = fresh_for;
        self
    }

    /// How many mappings the shipper sends to Redis at once (default 256).
    pub fn ship_batch(mut self, mappings: usize) -> TierOptions {
        self.ship_batch = mappings.max(1);
        self
    }

    /// The longest wait between two attempts to reach Redis while it is down (default 2 s; the wait starts at
    /// 50 ms and doubles).
    pub fn retry_max(mut self, wait: Duration) -> TierOptions {
        self.retry_max = wait.max(Duration::from_millis(1));
        self
    }
}

/// A snapshot of a [`Tiered`] store's counters.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TierStats {
    /// Mappings with changes not yet in Redis.
    pub outbox_depth: u64,
    /// How long the oldest change not yet in Redis has waited (`None` when the outbox is empty).
    pub replay_lag: Option<Duration>,
    /// Mappings shipped to Redis since open.
    pub shipped: u64,
    /// Failed Redis calls since open (by `get`s and by the shipper).
    pub redis_errors: u64,
    /// `get`s answered from a fresh local copy, with no network.
    pub local_hits: u64,
    /// `get`s that asked Redis (no local copy, or one older than [`TierOptions::fresh_for`]) and had an answer.
    pub remote_hits: u64,
    /// `get`s that found nothing, locally or in Redis.
    pub misses: u64,
    /// `get`s answered from the local copy alone (or `None`) because Redis could not be reached.
    pub degraded: u64,
    /// False while Redis is known to be unreachable (calls to it are spaced out).
    pub redis_available: bool,
}

impl TierStats {
    /// The share of `get`s answered locally with no network, 0 to 1 (0 before the first `get`).
    pub fn hit_ratio(&self) -> f64 {
        let gets = self.local_hits + self.remote_hits + self.misses + self.degraded;
        if gets == 0 {
            0.0
        } else {
            self.local_hits as f64 / gets as f64
        }
    }
}

/// A local [`Store`] with a [`RedisStore`] behind it: the User Storage Service of a server in a fleet.
///
/// Reads are local hash lookups once a mapping is known here; writes are local appends, shipped to Redis in the
/// background through a durable outbox, so while Redis is down `set` keeps succeeding and nothing acknowledged
/// is lost across a restart. Redis arbitrates between servers with the fleet rule (the first assignment wins,
/// goal lists unite), and each server's copy takes Redis's answer. docs/FLEET.md describes the guarantees, and
/// what a `get` can return during a partition.
///
/// ```no_run
/// use ussdb::{CampaignUserMap, RedisConfig, Tiered, UserStorageService};
///
/// # fn main() -> ussdb::Result<()> {
/// let tier = Tiered::open("/var/lib/app/uss", RedisConfig::new("redis://127.0.0.1:6379"))?;
/// tier.set(&CampaignUserMap::new("user-42", "checkout-test", "Variation-1"))?;
/// assert!(tier.get("user-42", "checkout-test")?.is_some());
/// println!("{:?}", tier.stats());
/// # Ok(())
/// # }
/// ```
pub struct Tiered {
    shared: Arc<Shared>,
    shipper: Option<JoinHandle<()>>,
    /// The claim on a worker directory ([`Tiered::open_worker`]), let go after the store above has closed.
    _claim: Option<std::fs::File>,
}

impl std::fmt::Debug for Tiered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("local", &self.shared.local.path())
            .field("remote", &self.shared.remote.target())
            .finish_non_exhaustive()
    }
}

struct Shared {
    local: Store,
    remote: RedisStore,
    options: TierOptions,
    /// Marked writes the shipper has not taken yet. Pushed to under the local store's write lock (inside
    /// `put_with`), so a write and its entry cannot be told apart by the shipper: lock order is the store's log,
    /// then this, and nothing holding this calls the store.
    queue: Mutex<Queue>,
    /// Mappings waiting for Redis, one entry each. Nothing holding it calls the local store.
    outbox: Mutex<Outbox>,
    /// Every mark below this number is shipped (the outbox's lowest waiting number, or the next one, as last
    /// seen): a local copy marked at or above it has changes Redis may not have.
    low: AtomicU64,
    /// When each local copy was last confirmed by Redis, by the mapping's keyed hash (hashed no further).
    fresh: Vec<Mutex<FreshTable>>,
    breaker: Mutex<Breaker>,
    signal: Mutex<Signal>,
    wake: Condvar,
    shipper_idle: AtomicBool,
    /// Set by writers, cleared by the shipper before it reads the queue: so a burst of writes wakes it once.
    work: AtomicBool,
    counters: Counters,
}

/// Spaces out calls to a Redis that failed: none before `until`, and the wait doubles per failure.
struct Breaker {
    until: Option<Instant>,
    wait: Duration,
}

#[derive(Default)]
struct Signal {
    stop: bool,
}

#[derive(Default)]
struct Counters {
    shipped: AtomicU64,
    redis_errors: AtomicU64,
    local_hits: AtomicU64,
    remote_hits: AtomicU64,
    misses: AtomicU64,
    degraded: AtomicU64,
}

const FIRST_RETRY_WAIT: Duration = Duration::from_millis(50);

/// The shipper's nap after a round that shipped, and between its looks at an empty outbox for
/// [`LINGER_ROUNDS`] looks before it sleeps until woken. Without it, sets spaced out as a server makes them went
/// to Redis one round trip each (a wake-up of the shipper, of the I/O thread and of Redis per set), and a set's
/// p99 was 2.5 times the local store's (docs/BENCHMARKS.md, "Sets spaced out as a server makes them"); with it they go a
/// millisecond's worth per pipeline, and a set that comes while the shipper lingers wakes nobody. The price: a
/// set reaches Redis up to a millisecond later.
const SHIP_NAP: Duration = Duration::from_millis(1);
const LINGER_ROUNDS: u32 = 250;

impl Tiered {
    /// Opens (or creates) the tier whose local store is `dir`, with Redis at `redis`. Redis is not contacted
    /// here: the tier starts, serves and records sets while Redis is down.
    pub fn open(dir: impl AsRef<Path>, redis: RedisConfig) -> Result<Tiered> {
        Tiered::open_with(dir, redis, TierOptions::default())
    }

    /// [`Tiered::open`] with options.
    pub fn open_with(
        dir: impl AsRef<Path>,
        redis: RedisConfig,
        options: TierOptions,
    ) -> Result<Tiered> {
        let remote = RedisStore::connect_lazy(redis)?;
        let local = Store::open_with(dir, options.local.clone())?;
        let outbox = recover_outbox(&local)?;
        let queue = Queue::new(outbox.next_seq);
        let shared = Arc::new(Shared {
            local,
            remote,
            options,
            queue: Mutex::new(queue),
            low: AtomicU64::new(outbox.low()),
            outbox: Mutex::new(outbox),
            fresh: (0..FRESH_SHARDS)
                .map(|_| Mutex::new(FreshTable::default()))
                .collect(),
            breaker: Mutex::new(Breaker {
                until: None,
                wait: FIRST_RETRY_WAIT,
            }),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            shipper_idle: AtomicBool::new(false),
            work: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let worker = Arc::clone(&shared);
        let shipper = std::thread::Builder::new()
            .name("ussdb-tier-shipper".into())
            .spawn(move || worker.ship_loop())
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    BackendErrorKind::Other,
                    shared.remote.target().to_owned(),
                    format!("starting the outbox shipper failed: {e}"),
                )
            })?;
        Ok(Tiered {
            shared,
            shipper: Some(shipper),
            _claim: None,
        })
    }

    /// Opens the tier in the first free worker directory under `base` (`base/worker-0`, `base/worker-1`, …), for
    /// a server that runs several worker processes on one machine (gunicorn, uWSGI, Node cluster): each worker
    /// keeps its own local store, and Redis, under the fleet rule, is what the workers share, as it is between
    /// machines. A directory is free when no live process holds its claim (`base/worker-N.claim`, locked while
    /// the tier is open; the kernel lets go of it when its process dies). So a worker that restarts takes a
    /// directory a stopped worker left, and ships whatever that one still had waiting for Redis.
    ///
    /// Fails with [`Error::Locked`] when `max_workers` directories are all in use.
    pub fn open_worker(
        base: impl AsRef<Path>,
        redis: RedisConfig,
        options: TierOptions,
        max_workers: usize,
    ) -> Result<Tiered> {
        let base = base.as_ref();
        std::fs::create_dir_all(base).map_err(|e| Error::io("create directory", base, e))?;
        for n in 0..max_workers {
            let claim_name = format!("worker-{n}.claim");
            let claim = crate::control::open_lock_file(base, &claim_name)?;
            match claim.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("lock worker claim", base.join(claim_name), e));
                }
            }
            match Tiered::open_with(
                base.join(format!("worker-{n}")),
                redis.clone(),
                options.clone(),
            ) {
                Ok(mut tier) => {
                    tier._claim = Some(claim);
                    return Ok(tier);
                }
                // Opened without a claim, by something else: not free after all.
                Err(Error::Locked { .. } | Error::LockMode { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Locked {
            path: base.join(format!("worker-{}.claim", max_workers.saturating_sub(1))),
        })
    }

    /// The mapping of `user_id` in `campaign_key`: the local copy when it is fresh or has changes not yet
    /// shipped; else Redis's (which the local copy then takes); the local copy (or `None`) when Redis cannot be
    /// reached. Fails only for bad ids, a local store error, or a Redis failure other than unreachability (such
    /// as a value that is not JSON) when there is no local copy to answer with.
    pub fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        check_tier_ids(user_id, campaign_key)?;
        self.shared.get(user_id, campaign_key)
    }

    /// Stores `map` under the fleet rule (a variation already kept here stays; goals unite), durably in the local
    /// log, and queues it for Redis. Returns once the local log has it: Redis being down does not fail it.
    pub fn set(&self, map: &CampaignUserMap) -> Result<()> {
        check_tier_ids(&map.user_id, &map.campaign_key)?;
        self.shared.set(map)
    }

    /// Waits until every change made so far is in Redis, at most `timeout`. Fails with
    /// [`BackendErrorKind::Timeout`] (saying how many mappings still wait) if Redis did not take them in time.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.shared.with_outbox(true, |o| o.len());
            if depth == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend(
                    BACKEND,
                    BackendErrorKind::Timeout,
                    self.shared.remote.target().to_owned(),
                    format!("{depth} mappings still wait to be shipped after {timeout:?}"),
                ));
            }
            self.shared.nudge();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A snapshot of the tier's counters.
    pub fn stats(&self) -> TierStats {
        let s = &self.shared;
        let (outbox_depth, replay_lag) = s.with_outbox(true, |outbox| {
            let oldest = outbox.oldest().map(|p| p.since.elapsed());
            (outbox.len() as u64, oldest)
        });
        let c = &s.counters;
        TierStats {
            outbox_depth,
            replay_lag,
            shipped: c.shipped.load(Ordering::Relaxed),
            redis_errors: c.redis_errors.load(Ordering::Relaxed),
            local_hits: c.local_hits.load(Ordering::Relaxed),
            remote_hits: c.remote_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            degraded: c.degraded.load(Ordering::Relaxed),
            redis_available: lock(&s.breaker).until.is_none(),
        }
    }

    /// The local store. Mappings waiting for Redis carry an outbox mark in their `metaData`, and one record under
    /// the user id `"\0ussdb"` is the outbox's watermark: write through the tier, not through this handle, or
    /// changes are not shipped.
    pub fn local(&self) -> &Store {
        &self.shared.local
    }

    /// The Redis half.
    pub fn remote(&self) -> &RedisStore {
        &self.shared.remote
    }
}

impl Drop for Tiered {
    fn drop(&mut self) {
        {
            let mut signal = lock(&self.shared.signal);
            signal.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(shipper) = self.shipper.take() {
            let _ = shipper.join();
        }
    }
}

impl UserStorageService for Tiered {
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        Tiered::get(self, user_id, campaign_key)
    }

    fn set(&self, map: &CampaignUserMap) -> Result<()> {
        Tiered::set(self, map)
    }
}

/// Ids a tier can store: the local store's, except user ids that start with U+0000 (reserved for the
/// watermark).
fn check_tier_ids(user_id: &str, campaign_key: &str) -> Result<()> {
    check_ids(user_id, campaign_key)?;
    if user_id.starts_with(RESERVED) {
        return Err(Error::InvalidKey {
            field: "user_id",
            key: user_id.chars().take(64).collect(),
            reason: "must not start with U+0000, which a tier reserves for its outbox".to_owned(),
        });
    }
    Ok(())
}

/// The sequence number of a mark, if `meta` is one.
fn read_mark(meta: &str) -> Option<u64> {
    meta.strip_prefix(MARK_PREFIX)?
        .strip_suffix('}')?
        .parse()
        .ok()
}

/// A local record's mapping and outbox mark, for a key known to be (`user_id`, `campaign_key`).
fn decode_local(
    user_id: &str,
    campaign_key: &str,
    value: &[u8],
) -> std::result::Result<(CampaignUserMap, Option<u64>), String> {
    let stored = codec::decode_value(value)?;
    let map = CampaignUserMap {
        user_id: user_id.to_owned(),
        campaign_key: campaign_key.to_owned(),
        variation_name: stored.variation_name.into_owned(),
        goal_identifier: stored.goal_identifier.map(std::borrow::Cow::into_owned),
    };
    Ok((map, stored.meta_data.as_deref().and_then(read_mark)))
}

/// Finds the marked mappings at or above the watermark: the outbox as it was when the store was last written.
fn recover_outbox(local: &Store) -> Result<Outbox> {
    let record = local.get(WATERMARK.0, WATERMARK.1)?;
    let watermark = record
        .as_ref()
        .and_then(|m| m.variation_name.parse::<u64>().ok())
        .unwrap_or(0);
    // When the oldest waiting mapping was first changed, if the shipper recorded it before the store closed.
    let oldest_since = record
        .as_ref()
        .and_then(|m| m.goal_identifier.as_deref())
        .and_then(|ms| ms.parse::<u64>().ok())
        .and_then(instant_of_wall_millis);
    let mut found: Vec<(u64, String, String)> = Vec::new();
    for entry in local.entries() {
        let (map, meta) = entry?;
        if let Some(seq) = meta.as_deref().and_then(read_mark)
            && seq >= watermark
            && !map.user_id.starts_with(RESERVED)
        {
            found.push((seq, map.user_id, map.campaign_key));
        }
    }
    found.sort();
    let now = Instant::now();
    let oldest_seq = found.first().map(|(seq, _, _)| *seq);
    let mut outbox = Outbox::default();
    outbox.next_seq = watermark;
    outbox.watermark = watermark;
    outbox.since_recorded = oldest_since.is_some();
    for (seq, user_id, campaign_key) in found {
        // Numbers are unique as written; a repeated one (found in order) goes after the others.
        let seq = seq.max(outbox.next_seq);
        let hash = local.engine().key_hash(&user_id, campaign_key.as_bytes());
        // The oldest keeps the age the watermark recorded when the watermark names it (the recorded number is
        // the oldest's at the time of writing); others count from now, so the replay lag is never overstated.
        let since = match oldest_since {
            Some(since) if Some(seq) == oldest_seq && oldest_seq == Some(watermark) => since,
            _ => now,
        };
        outbox.insert(seq, OutKey::new(hash, &user_id, &campaign_key), since);
    }
    if !outbox.is_empty() {
        log::info!(
            "{}: {} mappings wait to be shipped to Redis",
            local.path().display(),
            outbox.len()
        );
    }
    Ok(outbox)
}

/// `since` as wall-clock milliseconds since the Unix epoch.
fn wall_millis(since: Instant) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_sub(since.elapsed()).as_millis()).unwrap_or(u64::MAX)
}

/// The `Instant` of wall-clock milliseconds `ms` (now, if the clock says `ms` is in the future).
fn instant_of_wall_millis(ms: u64) -> Option<Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let age = now.saturating_sub(Duration::from_millis(ms));
    Instant::now().checked_sub(age)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True for the failures that say Redis cannot be reached now (rather than that one key or value is wrong).
fn unreachable(e: &Error) -> bool {
    matches!(
        e.backend_kind(),
        Some(BackendErrorKind::Unavailable | BackendErrorKind::Timeout)
    )
}

/// What a round of the shipper did.
enum Round {
    /// Nothing waits.
    Idle,
    /// Some mappings were shipped: go on.
    Progress,
    /// Nothing could be shipped, though Redis answers: retry after a while.
    Stuck,
    /// Redis cannot be reached.
    Backoff,
}

impl Shared {
    /// The tier's hash of a mapping's ids, for its outbox and freshness tables: the local store's own key hash,
    /// which a get hands back to the store, so a key is hashed once.
    fn hash(&self, user_id: &str, campaign_key: &str) -> u64 {
        self.local
            .engine()
            .key_hash(user_id, campaign_key.as_bytes())
    }

    fn fresh_shard(&self, hash: u64) -> Option<&Mutex<FreshTable>> {
        self.fresh.get((hash >> 32) as usize % FRESH_SHARDS)
    }

    fn is_fresh(&self, hash: u64) -> bool {
        self.fresh_shard(hash).is_some_and(|shard| {
            lock(shard)
                .get(&hash)
                .is_some_and(|t| t.elapsed() < self.options.fresh_for)
        })
    }

    fn mark_fresh(&self, hash: u64) {
        if let Some(shard) = self.fresh_shard(hash) {
            lock(shard).insert(hash, Instant::now());
        }
    }

    /// Forgets confirmations too old to count, so the table holds only what was confirmed recently.
    fn prune_fresh(&self) {
        for shard in &self.fresh {
            lock(shard).retain(|_, t| t.elapsed() < self.options.fresh_for);
        }
    }

    /// True when a local copy marked `mark` has changes Redis may not have.
    fn is_pending(&self, mark: Option<u64>) -> bool {
        mark.is_some_and(|m| m >= self.low.load(Ordering::SeqCst))
    }

    /// Runs `f` on the outbox, after taking in the queue's entries if `take` (only the outbox's lock is held while
    /// they are hashed into it; the queue's is held for a swap of buffers). Then publishes the lowest waiting
    /// number, which only grows: entries not taken in yet have higher numbers than any the outbox gave out.
    fn with_outbox<R>(&self, take: bool, f: impl FnOnce(&mut Outbox) -> R) -> R {
        let mut outbox = lock(&self.outbox);
        if take {
            outbox.take_from(&self.queue, |u, c| self.hash(u, c));
        }
        let out = f(&mut outbox);
        self.low.fetch_max(outbox.low(), Ordering::SeqCst);
        out
    }

    /// Appends to `out` the value of `map` marked as waiting for Redis under the next number, which the queue
    /// takes with its ids. Returns whether to write (false if the value cannot be encoded, too large: its error
    /// goes to `failed` and nothing is queued) and whether the queue was empty (then the shipper needs a nudge).
    /// Called inside `put_with`, so entries are queued in the order of the log and only by writes under way.
    fn write_marked(
        &self,
        map: &CampaignUserMap,
        out: &mut Vec<u8>,
        failed: &mut Option<Error>,
    ) -> (bool, bool) {
        let mut queue = lock(&self.queue);
        match codec::encode_value_into(map, Some(queue.mark()), out) {
            Ok(()) => {
                let (_, was_empty) = queue.push(&map.user_id, &map.campaign_key);
                (true, was_empty)
            }
            Err(e) => {
                *failed = Some(e);
                (false, false)
            }
        }
    }

    /// Appends to `out` the value of `map` with the mark `mark` (or none), for a `put_with` closure; returns
    /// whether to write (an error goes to `failed`).
    fn write_plain(
        map: &CampaignUserMap,
        mark: Option<u64>,
        out: &mut Vec<u8>,
        failed: &mut Option<Error>,
    ) -> bool {
        let text = mark.map(mark_text);
        codec::encode_value_into(map, text.as_deref(), out)
            .map_err(|e| *failed = Some(e))
            .is_ok()
    }

    fn redis_down(&self) -> bool {
        lock(&self.breaker)
            .until
            .is_some_and(|until| Instant::now() < until)
    }

    fn redis_failed(&self) {
        let mut b = lock(&self.breaker);
        let wait = if b.until.is_some() {
            b.wait.saturating_mul(2).min(self.options.retry_max)
        } else {
            FIRST_RETRY_WAIT.min(self.options.retry_max)
        };
        b.wait = wait;
        b.until = Some(Instant::now() + wait);
    }

    fn redis_answered(&self) {
        let mut b = lock(&self.breaker);
        if b.until.take().is_some() {
            log::info!("Redis at {} answers again", self.remote.target());
        }
        b.wait = FIRST_RETRY_WAIT;
    }

    fn count_redis_error(&self, e: &Error) {
        self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
        if unreachable(e) {
            self.redis_failed();
        }
    }

    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        let hash = self.hash(user_id, campaign_key);
        let found =
            self.local
                .engine()
                .get_hashed(hash, user_id, campaign_key.as_bytes(), |value| {
                    decode_local(user_id, campaign_key, value)
                })?;
        let (local, mark) = match found {
            Some((map, mark)) => (Some(map), mark),
            None => (None, None),
        };
        if local.is_some() && (self.is_pending(mark) || self.is_fresh(hash)) {
            self.counters.local_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(local);
        }
        if self.redis_down() {
            self.counters.degraded.fetch_add(1, Ordering::Relaxed);
            return Ok(local);
        }
        match self.remote.get(user_id, campaign_key) {
            Ok(Some(remote)) => {
                self.redis_answered();
                self.counters.remote_hits.fetch_add(1, Ordering::Relaxed);
                self.refresh(hash, &remote).map(Some)
            }
            Ok(None) => {
                self.redis_answered();
                match local {
                    Some(local) => {
                        // Redis lacks what this server has (it lost data, or the change was never shipped): ship it.
                        self.counters.remote_hits.fetch_add(1, Ordering::Relaxed);
                        self.reship(&local)?;
                        Ok(Some(local))
                    }
                    None => {
                        self.counters.misses.fetch_add(1, Ordering::Relaxed);
                        Ok(None)
                    }
                }
            }
            Err(e) => {
                self.count_redis_error(&e);
                match local {
                    Some(local) => {
                        if !unreachable(&e) {
                            log::warn!(
                                "answering {user_id:?} in {campaign_key:?} from the local copy: {e}"
                            );
                        }
                        self.counters.degraded.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(local))
                    }
                    None if unreachable(&e) => {
                        self.counters.degraded.fetch_add(1, Ordering::Relaxed);
                        Ok(None)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// The fleet rule against the local copy and the marked write, in one hold of the local store's write lock
    /// (`put_with`): the key is looked up once, and no other write of the mapping comes between the rule and the
    /// write. A first assignment decodes and copies nothing; a set that adds no goal writes nothing. The set path
    /// takes no lock of the tier's but the queue's, hashes nothing of its own and allocates nothing for the outbox.
    fn set(&self, map: &CampaignUserMap) -> Result<()> {
        codec::check_variation(&map.variation_name)?;
        let mut failed = None;
        let nudge = self.local.engine().put_with(
            &map.user_id,
            map.campaign_key.as_bytes(),
            |old, out| {
                let Some(value) = old else {
                    return Ok(self.write_marked(map, out, &mut failed));
                };
                let stored = codec::decode_value(value)?;
                let tracked = stored.goal_identifier.as_deref().unwrap_or_default();
                let known = |goal: &str| {
                    tracked
                        .split(crate::GOAL_DELIMITER)
                        .any(|g| !g.is_empty() && g == goal)
                };
                if map.goals().all(known) {
                    return Ok((false, false));
                }
                let stored = CampaignUserMap {
                    user_id: map.user_id.clone(),
                    campaign_key: map.campaign_key.clone(),
                    variation_name: stored.variation_name.into_owned(),
                    goal_identifier: stored.goal_identifier.map(std::borrow::Cow::into_owned),
                };
                Ok(self.write_marked(&first_wins(&stored, map), out, &mut failed))
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        if nudge {
            self.nudge();
        }
        Ok(())
    }

    /// The local copy takes Redis's answer `remote`, keeping (and queueing for Redis) any goal only it has.
    fn refresh(&self, hash: u64, remote: &CampaignUserMap) -> Result<CampaignUserMap> {
        let (user_id, campaign_key) = (remote.user_id.as_str(), remote.campaign_key.as_str());
        let mut failed = None;
        let (merged, nudge) =
            self.local
                .engine()
                .put_with(user_id, campaign_key.as_bytes(), |old, out| {
                    let (local, mark) = match old {
                        Some(value) => {
                            let (local, mark) = decode_local(user_id, campaign_key, value)?;
                            (Some(local), mark)
                        }
                        None => (None, None),
                    };
                    let merged = match &local {
                        None => remote.clone(),
                        Some(local) => first_wins(remote, local),
                    };
                    let pending = self.is_pending(mark);
                    let (write, nudge) = if merged != *remote && !pending {
                        self.write_marked(&merged, out, &mut failed)
                    } else if local.as_ref() != Some(&merged) {
                        // A waiting mapping keeps its mark: the shipper merges Redis's answer with what it finds.
                        let mark = mark.filter(|_| pending);
                        (Shared::write_plain(&merged, mark, out, &mut failed), false)
                    } else {
                        (false, false)
                    };
                    Ok((write, (merged, nudge)))
                })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if nudge {
            self.nudge();
        }
        self.mark_fresh(hash);
        Ok(merged)
    }

    /// Queues the local copy for Redis again (unless it already waits).
    fn reship(&self, local: &CampaignUserMap) -> Result<()> {
        let (user_id, campaign_key) = (local.user_id.as_str(), local.campaign_key.as_str());
        let mut failed = None;
        let nudge =
            self.local
                .engine()
                .put_with(user_id, campaign_key.as_bytes(), |old, out| {
                    let current = match old {
                        Some(value) => {
                            let (current, mark) = decode_local(user_id, campaign_key, value)?;
                            if self.is_pending(mark) {
                                return Ok((false, false));
                            }
                            current
                        }
                        None => local.clone(),
                    };
                    Ok(self.write_marked(&current, out, &mut failed))
                })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if nudge {
            self.nudge();
        }
        Ok(())
    }

    /// Writes the watermark (the lowest number still waiting, or the next one) if it moved: after a restart,
    /// marks below it are known to be shipped.
    fn advance_watermark(&self) {
        let decided = self.with_outbox(true, |outbox| {
            let oldest = outbox.oldest().map(|p| p.since);
            // Also written when a first mapping starts waiting, so a restart knows since when.
            if outbox.low() <= outbox.watermark && oldest.is_some() == outbox.since_recorded {
                return None;
            }
            Some((outbox.low(), outbox.watermark, oldest))
        });
        let Some((low, written, oldest)) = decided else {
            return;
        };
        // The record's goal field holds the wall-clock time (ms since the Unix epoch) the oldest waiting mapping
        // was first changed, for the replay lag after a restart.
        let mut record = CampaignUserMap::new(WATERMARK.0, WATERMARK.1, low.to_string());
        record.goal_identifier = oldest.map(|since| wall_millis(since).to_string());
        match self.local.set(&record) {
            Ok(()) => {
                let mut outbox = lock(&self.outbox);
                outbox.watermark = outbox.watermark.max(low).max(written);
                outbox.since_recorded = oldest.is_some();
            }
            Err(e) => log::error!("writing the outbox watermark failed: {e}"),
        }
    }

    /// Tells the shipper there is work; wakes it only if it sleeps and has not been told since its last look.
    /// Writers call it only when their entry found the queue empty (the shipper takes the whole queue at once),
    /// so a busy shipper costs a writer no atomic write and no system call.
    fn nudge(&self) {
        if !self.work.swap(true, Ordering::SeqCst) && self.shipper_idle.load(Ordering::SeqCst) {
            let _signal = lock(&self.signal);
            self.wake.notify_one();
        }
    }

    /// The shipper's loop: rounds while there is work, a nap of [`SHIP_NAP`] after each (so that a stream of sets
    /// goes out in batches), looks every [`SHIP_NAP`] for a while once there is none, then a sleep until a writer
    /// wakes it, or while Redis is down until the next try.
    fn ship_loop(&self) {
        let mut last_prune = Instant::now();
        // Empty rounds since the last one that shipped something.
        let mut lingered = 0;
        loop {
            if lock(&self.signal).stop {
                return;
            }
            if last_prune.elapsed() >= self.options.fresh_for.max(Duration::from_millis(100)) {
                self.prune_fresh();
                last_prune = Instant::now();
            }
            let until_retry = || {
                lock(&self.breaker)
                    .until
                    .map(|until| until.saturating_duration_since(Instant::now()))
            };
            let wait = if self.redis_down() {
                self.advance_watermark();
                until_retry()
            } else {
                match self.ship_round() {
                    Round::Progress => {
                        lingered = 0;
                        std::thread::sleep(SHIP_NAP);
                        continue;
                    }
                    Round::Idle if lingered < LINGER_ROUNDS => {
                        lingered += 1;
                        std::thread::sleep(SHIP_NAP);
                        continue;
                    }
                    Round::Idle => Some(Duration::from_millis(200)),
                    Round::Stuck => Some(self.options.retry_max),
                    Round::Backoff => until_retry(),
                }
            };
            let Some(wait) = wait else { continue };
            // Announce the sleep, then look once more: a writer that missed the announcement set `work` before.
            self.shipper_idle.store(true, Ordering::SeqCst);
            let down = self.redis_down();
            let signal = lock(&self.signal);
            if down || !self.work.load(Ordering::SeqCst) {
                // While Redis is down, new work does not shorten the wait; only stopping does.
                let _signal = self
                    .wake
                    .wait_timeout_while(signal, wait, |s| {
                        !s.stop && (down || !self.work.load(Ordering::SeqCst))
                    })
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            self.shipper_idle.store(false, Ordering::SeqCst);
        }
    }

    /// Ships the oldest waiting mappings once.
    fn ship_round(&self) -> Round {
        self.work.store(false, Ordering::SeqCst);
        let batch = self.with_outbox(true, |o| o.batch(self.options.ship_batch));
        if batch.is_empty() {
            self.advance_watermark();
            return Round::Idle;
        }
        // Every entry taken was queued by a write under way: once those writes are appended (and as durable as
        // the local mode promises), the reads below see them, and nothing is shipped before it is durable here.
        if let Err(e) = self.local.engine().wait_appended() {
            log::error!("waiting for local writes before shipping failed: {e}");
            return Round::Stuck;
        }
        let mut to_ship = Vec::with_capacity(batch.len());
        for (key, mark) in batch {
            match self.local.get(key.user_id(), key.campaign_key()) {
                Ok(Some(map)) => to_ship.push((key, mark, map)),
                // A write that failed leaves nothing to ship.
                Ok(None) => {
                    self.with_outbox(false, |o| o.remove_if(&key, mark));
                }
                Err(e) => {
                    log::error!("reading a mapping to ship failed: {e}");
                    self.requeue(&key, mark);
                }
            }
        }
        let answers = self
            .remote
            .merge_many(to_ship.iter().map(|(_, _, m)| m.clone()).collect());
        let (mut down, mut settled) = (false, 0);
        for ((key, mark, shipped), answer) in to_ship.into_iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    settled += 1;
                    if let Err(e) = self.settle(&key, mark, &shipped, &answer) {
                        log::error!("applying Redis's answer locally failed: {e}");
                    }
                }
                Err(e) => {
                    self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                    match e.backend_kind() {
                        Some(BackendErrorKind::InvalidData | BackendErrorKind::Other) => {
                            // This key cannot be shipped now; the others can. It goes to the back.
                            log::error!(
                                "shipping {:?} in {:?} failed: {e}",
                                key.user_id(),
                                key.campaign_key()
                            );
                            self.requeue(&key, mark);
                        }
                        _ => {
                            if !down {
                                log::warn!("shipping to Redis failed, retrying later: {e}");
                            }
                            down = true;
                        }
                    }
                }
            }
        }
        self.advance_watermark();
        if down {
            self.redis_failed();
            Round::Backoff
        } else if settled == 0 {
            // Only mappings Redis refused, or whose write is still under way: not worth an immediate retry.
            Round::Stuck
        } else {
            self.redis_answered();
            Round::Progress
        }
    }

    /// A shipment of `key` (`shipped`, read when the outbox had taken writes of it up to number `mark`) got
    /// `answer` from Redis. The local copy takes the answer merged with what it holds now; if that is more than
    /// Redis answered, the mapping stays queued (and goes out again); otherwise it leaves the outbox, unless a
    /// newer write of it was taken in meanwhile. A mark left in the record is made stale by the watermark.
    fn settle(
        &self,
        key: &OutKey,
        mark: u64,
        shipped: &CampaignUserMap,
        answer: &CampaignUserMap,
    ) -> Result<()> {
        let (user_id, campaign_key) = (key.user_id(), key.campaign_key());
        // Redis answered with exactly what was shipped (a first assignment, or goals it had): nothing to write.
        // A write since the read has a newer number, which keeps the mapping in the outbox.
        let done = if shipped == answer {
            true
        } else {
            let mut failed = None;
            let (done, nudge) =
                self.local
                    .engine()
                    .put_with(user_id, campaign_key.as_bytes(), |old, out| {
                        let local = match old {
                            Some(value) => Some(decode_local(user_id, campaign_key, value)?.0),
                            None => None,
                        };
                        let merged = match &local {
                            None => answer.clone(),
                            Some(local) => first_wins(answer, local),
                        };
                        Ok(if merged != *answer {
                            // The local copy holds more than Redis answered: it goes out again.
                            let (write, nudge) = if local.as_ref() == Some(&merged) {
                                (false, false)
                            } else {
                                self.write_marked(&merged, out, &mut failed)
                            };
                            (write, (false, nudge))
                        } else if local.as_ref() != Some(answer) {
                            let write = Shared::write_plain(answer, None, out, &mut failed);
                            (write, (true, false))
                        } else {
                            (false, (true, false))
                        })
                    })?;
            if let Some(e) = failed {
                return Err(e);
            }
            if nudge {
                self.nudge();
            }
            done
        };
        if done && self.with_outbox(false, |o| o.remove_if(key, mark)) {
            self.counters.shipped.fetch_add(1, Ordering::Relaxed);
            self.mark_fresh(key.hash());
        }
        Ok(())
    }

    /// Moves `key` to the back of the queue: the record is written again under a new number (so a restart keeps
    /// it at the back too), whose entry puts it back in the outbox, at the back, once it has left its place. It
    /// leaves its place unless a newer write of it was taken in meanwhile (then it stays where it is). If the
    /// rewrite fails, it moves to the back in memory only.
    fn requeue(&self, key: &OutKey, mark: u64) {
        let (user_id, campaign_key) = (key.user_id(), key.campaign_key());
        let mut failed = None;
        let rewritten =
            self.local
                .engine()
                .put_with(user_id, campaign_key.as_bytes(), |old, out| {
                    let Some(value) = old else {
                        // Nothing left to ship.
                        return Ok((false, false));
                    };
                    let (map, _) = decode_local(user_id, campaign_key, value)?;
                    Ok(self.write_marked(&map, out, &mut failed))
                });
        match failed.map_or(rewritten, Err) {
            Ok(nudge) => {
                self.with_outbox(false, |o| o.remove_if(key, mark));
                if nudge {
                    self.nudge();
                }
            }
            Err(e) => {
                // It goes to the back in memory at least, so the mappings after it are not held up (a restart
                // finds it where its mark says).
                log::error!("re-marking a mapping for Redis failed: {e}");
                self.with_outbox(false, |o| {
                    o.move_back(&self.queue, |u, c| self.hash(u, c), key, mark)
                });
            }
        }
    }
}
