//! [`RedisStore`]: a User Storage Service over Redis or Valkey, standalone or Cluster, with the fleet's
//! first-assignment-wins rule applied atomically per key.
//!
//! The SDK-facing trait is synchronous, the Redis client's reconnecting connections (`ConnectionManager`, the
//! async cluster client) are asynchronous. The store owns a current-thread tokio runtime driven by one thread of
//! its own; a call spawns its future there and waits on a plain channel. So it works the same from a plain
//! thread and from inside any async runtime (where it blocks that worker for one round trip, like any
//! synchronous I/O), and never needs the caller's runtime. docs/DESIGN.md has the reasoning.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, Value};

use super::config::{BACKEND, RedisConfig};
use super::value;
use crate::{
    BackendErrorKind, CampaignUserMap, Error, FeatureRecord, FeatureStorage, MAX_ID_LEN, Result,
    UserStorageService,
};

/// Compare-and-set of one key: the only way this store writes a mapping, so that whatever the merge rule
/// computed from the value it read is written only if that value is still there. One key per call, so it runs
/// on whichever Cluster node owns the key. (The shipper's batches first try `SET NX` for every key in one
/// pipeline: the same rule for a key that is absent, at the cost of a plain command, `Remote::create_many`.)
///
/// The merge itself is computed by the client, not in Lua: Redis's Lua JSON codec re-encodes numbers with 14
/// significant digits and reorders keys, which would damage fields (`metaData`, a newer writer's fields) that
/// must survive byte for byte.
const CAS_SCRIPT: &str = r"
-- KEYS[1]: the mapping's key.
-- ARGV[1]: '0' when the key must be absent, '1' when it must hold exactly ARGV[2].
-- ARGV[3]: the value to write. ARGV[4]: time to live in milliseconds, '0' for none.
-- Returns {1} when written, {0} when the key is absent (and was expected to hold a value), {2, value} otherwise.
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and current == false) or (ARGV[1] == '1' and current == ARGV[2]) then
  if ARGV[4] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  return {1}
end
if current == false then
  return {0}
end
return {2, current}
";

/// How many compare-and-set rounds a merge tries before it reports contention: each lost round means another
/// writer changed the key in between, and the rule only ever grows a value, so a few rounds always suffice in
/// practice.
const MAX_CAS_ROUNDS: usize = 16;

/// Keys fetched per `SCAN` call.
const SCAN_COUNT: usize = 1000;

/// A User Storage Service over Redis or Valkey (6 or newer), standalone or Cluster.
///
/// Keys and values are VWO's Redis helpers' by default (see [`RedisConfig`]), so an existing keyspace is read as
/// it is. A `set` applies the fleet rule atomically per key: if the key already holds a variation it is kept
/// (the first assignment wins), and goal lists are merged as a set union, so a goal tracked on one server is never
/// lost by another's write. Fields the store does not know (`metaData`, a newer writer's fields) are kept.
///
/// It also holds the records of VWO's FME SDKs ([`FeatureStorage`]: [`RedisStore::get_feature`],
/// [`RedisStore::set_feature`]), under keys of their own (`prefix + "fme:" + featureKey + ":" + userId`, see
/// [`RedisConfig::feature_prefix`]), each value the record's JSON as [`FeatureRecord::to_json`] writes it. A
/// `set_feature` replaces the record, as the local store's does.
///
/// Every failure is an [`Error::Backend`] whose [`BackendErrorKind`] says whether retrying can help, naming the
/// server (password replaced by `***`) or, for a value that cannot be read, the key.
///
/// Cloning is cheap and shares the connection. The connection is made on first use and remade, with backoff,
/// whenever it drops.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.remote.target)
            .finish_non_exhaustive()
    }
}

struct Inner {
    remote: Arc<Remote>,
    runtime: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// What the runtime's tasks share: the configuration, the connection (made on first use) and the script.
struct Remote {
    config: RedisConfig,
    target: String,
    secrets: Vec<String>,
    slot: tokio::sync::Mutex<Option<Conn>>,
    cas: redis::Script,
}

/// A connection of either kind; both reconnect by themselves once made.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a compare-and-set found.
enum Cas {
    Written,
    Absent,
    Holds(Vec<u8>),
}

impl RedisStore {
    /// Connects to the server (or Cluster) of `config` and checks it answers (`PING`), so a wrong URL or
    /// password fails here: [`BackendErrorKind::Unavailable`] or [`BackendErrorKind::Timeout`] when nothing
    /// answers, [`BackendErrorKind::Refused`] for wrong credentials, [`BackendErrorKind::Config`] for a URL that
    /// cannot be read.
    pub fn connect(config: RedisConfig) -> Result<RedisStore> {
        let store = RedisStore::connect_lazy(config)?;
        store.ping()?;
        Ok(store)
    }

    /// A store for the server at `url`, with the defaults of [`RedisConfig::new`], contacting nothing until the
    /// first call (see [`RedisStore::connect_lazy`]).
    pub fn open(url: &str) -> Result<RedisStore> {
        RedisStore::connect_lazy(RedisConfig::new(url))
    }

    /// Like [`RedisStore::connect`], but contacts nothing until the first call: for a process that must start
    /// while Redis is down. Fails only for a configuration that cannot work.
    pub fn connect_lazy(config: RedisConfig) -> Result<RedisStore> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    BackendErrorKind::Other,
                    config.target(),
                    format!("starting the client's I/O runtime failed: {e}"),
                )
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ussdb-redis-io".into())
            .spawn(move || {
                // Drives every task spawned on the runtime until the store is dropped.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    BackendErrorKind::Other,
                    config.target(),
                    format!("starting the client's I/O thread failed: {e}"),
                )
            })?;
        let remote = Remote {
            target: config.target(),
            secrets: config.secrets(),
            config,
            slot: tokio::sync::Mutex::new(None),
            cas: redis::Script::new(CAS_SCRIPT),
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                remote: Arc::new(remote),
                runtime: handle,
                stop: Mutex::new(Some(stop)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The configuration this store was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.remote.config
    }

    /// What errors name: the URLs with passwords replaced by `***`.
    pub fn target(&self) -> &str {
        &self.inner.remote.target
    }

    /// The Redis key of a mapping: `prefix + campaignKey + ":" + userId`.
    pub fn key(&self, user_id: &str, campaign_key: &str) -> String {
        self.config().key(user_id, campaign_key)
    }

    /// Checks the server answers (`PING`; on a Cluster, the node that answers for the empty key's slot).
    pub fn ping(&self) -> Result<()> {
        let remote = Arc::clone(&self.inner.remote);
        self.block(async move { remote.ping().await })
    }

    /// The mapping of `user_id` in `campaign_key`, or `None`.
    pub fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        check_ids(user_id, campaign_key)?;
        let key = self.key(user_id, campaign_key);
        let remote = Arc::clone(&self.inner.remote);
        let raw = self.block({
            let key = key.clone();
            async move { remote.get_raw(&key).await }
        })?;
        raw.map(|bytes| value::decode(&key, &bytes, user_id, campaign_key))
            .transpose()
    }

    /// Stores `map` under the fleet rule and returns what the key holds afterwards: `map` itself if the key was
    /// new; else the stored variation (the first assignment wins) with the union of the stored and the given
    /// goals. Atomic per key: concurrent merges from many servers all return the same variation.
    pub fn set_merged(&self, map: &CampaignUserMap) -> Result<CampaignUserMap> {
        check_ids(&map.user_id, &map.campaign_key)?;
        let remote = Arc::clone(&self.inner.remote);
        let map = map.clone();
        self.block(async move { remote.merge(&map).await })
    }

    /// [`RedisStore::set_merged`] for many mappings at once, sent concurrently over the one connection (one round
    /// trip's wait for the lot, rather than one per mapping): what a bulk copy into Redis uses. The results are in
    /// the order of `maps`; a mapping with bad ids gets its error and the others are still written.
    pub fn set_merged_many(&self, maps: &[CampaignUserMap]) -> Vec<Result<CampaignUserMap>> {
        let mut results: Vec<Option<Result<CampaignUserMap>>> = maps
            .iter()
            .map(|m| check_ids(&m.user_id, &m.campaign_key).err().map(Err))
            .collect();
        let valid: Vec<CampaignUserMap> = maps
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(m, _)| m.clone())
            .collect();
        let mut merged = self.merge_many(valid).into_iter();
        for slot in &mut results {
            if slot.is_none() {
                *slot = merged.next();
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(self.inner.remote.other("a merge ended without an answer")))
            })
            .collect()
    }

    /// Erases the mapping of `user_id` in `campaign_key`; true if there was one.
    pub fn delete(&self, user_id: &str, campaign_key: &str) -> Result<bool> {
        check_ids(user_id, campaign_key)?;
        let key = self.key(user_id, campaign_key);
        let remote = Arc::clone(&self.inner.remote);
        self.block(async move { remote.delete(&key).await })
    }

    /// The Redis key of an FME record: `prefix + featurePrefix + featureKey + ":" + userId` (the feature prefix is
    /// `"fme:"` unless [`RedisConfig::feature_prefix`] says otherwise).
    pub fn feature_key(&self, feature_key: &str, user_id: &str) -> String {
        self.config().feature_key(feature_key, user_id)
    }

    /// The FME record of `user_id` for `feature_key` (a feature flag's key, or `_vwo_meta_meg_<groupId>`), or
    /// `None`: what an FME SDK's connector `get(featureKey, userId)` returns. A value that is not an FME record in
    /// JSON, or is the record of other ids, is [`BackendErrorKind::InvalidData`] naming the key.
    pub fn get_feature(&self, feature_key: &str, user_id: &str) -> Result<Option<FeatureRecord>> {
        check_feature_ids(feature_key, user_id)?;
        let key = self.feature_key(feature_key, user_id);
        let remote = Arc::clone(&self.inner.remote);
        let raw = self.block({
            let key = key.clone();
            async move { remote.get_raw(&key).await }
        })?;
        raw.map(|bytes| value::decode_feature(&key, &bytes, feature_key, user_id))
            .transpose()
    }

    /// Stores `record` as its JSON ([`FeatureRecord::to_json`], every member kept), replacing whatever its key
    /// held, with one `SET` (and the configured time to live): what an FME SDK's connector `set(data)` does, and
    /// the rule of the local store's [`Store::set_feature`](crate::Store::set_feature). The SDKs themselves keep a
    /// stored decision (they read before they decide and write only what they decided), so the last write is the
    /// record.
    pub fn set_feature(&self, record: &FeatureRecord) -> Result<()> {
        record.check()?;
        let key = self.feature_key(&record.feature_key, &record.user_id);
        let json = record.to_json();
        let remote = Arc::clone(&self.inner.remote);
        self.block(async move { remote.set_raw(&key, &json).await })
    }

    /// Erases the FME record of `user_id` for `feature_key`; true if there was one.
    pub fn delete_feature(&self, feature_key: &str, user_id: &str) -> Result<bool> {
        check_feature_ids(feature_key, user_id)?;
        let key = self.feature_key(feature_key, user_id);
        let remote = Arc::clone(&self.inner.remote);
        self.block(async move { remote.delete(&key).await })
    }

    /// Every mapping whose key (after the prefix) matches the glob `pattern` (`"*"` for all), read with `SCAN`
    /// on the server or on every Cluster master: for migrating a keyspace into a local store (see
    /// docs/FLEET.md). FME records (under the `fme:` segment, see [`RedisStore::set_feature`]) are passed over.
    /// Values that cannot be read are yielded as errors naming their key, and the walk goes on;
    /// an error of the walk itself ends it. As with `SCAN`, a key may be yielded twice and keys written meanwhile
    /// may be missed.
    pub fn scan(&self, pattern: &str) -> RedisScan {
        RedisScan {
            store: self.clone(),
            pattern: format!("{}{pattern}", glob_escape(&self.config().key_prefix)),
            nodes: None,
            node: 0,
            cursor: 0,
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// Merges each map (see [`RedisStore::set_merged`]) concurrently over the one connection; the results are in the
    /// order of `maps`.
    pub(crate) fn merge_many(&self, maps: Vec<CampaignUserMap>) -> Vec<Result<CampaignUserMap>> {
        let count = maps.len();
        let remote = Arc::clone(&self.inner.remote);
        let per_op = self.op_timeout();
        let all = self.block_for(per_op.saturating_mul(3), async move {
            let mut out: Vec<Option<Result<CampaignUserMap>>> = (0..count).map(|_| None).collect();
            // New keys are written in one pipeline; what it did not write (keys that exist, or all of them if it
            // failed: each then meets the failure itself) is merged key by key.
            let (created, exist) =
                match tokio::time::timeout(per_op, remote.create_many(&maps)).await {
                    Ok(Ok(Some(created))) => (created, true),
                    _ => (vec![false; count], false),
                };
            let mut tasks = tokio::task::JoinSet::new();
            for (i, (map, created)) in maps.into_iter().zip(created).enumerate() {
                if created {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(Ok(map));
                    }
                    continue;
                }
                let remote = Arc::clone(&remote);
                tasks.spawn(async move {
                    let merging = async {
                        if exist {
                            remote.merge_existing(&map).await
                        } else {
                            remote.merge(&map).await
                        }
                    };
                    let merged = match tokio::time::timeout(per_op, merging).await {
                        Ok(result) => result,
                        Err(_) => Err(remote.timed_out(per_op)),
                    };
                    (i, merged)
                });
            }
            while let Some(joined) = tasks.join_next().await {
                if let Ok((i, merged)) = joined
                    && let Some(slot) = out.get_mut(i)
                {
                    *slot = Some(merged);
                }
            }
            Ok(out)
        });
        match all {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(self
                            .inner
                            .remote
                            .other("a merge task ended without an answer"))
                    })
                })
                .collect(),
            Err(e) => {
                let message = e.to_string();
                let kind = e.backend_kind().unwrap_or(BackendErrorKind::Other);
                (0..count)
                    .map(|_| {
                        Err(Error::backend(
                            BACKEND,
                            kind,
                            self.target().to_owned(),
                            message.clone(),
                        ))
                    })
                    .collect()
            }
        }
    }

    /// How long one call may take in all: connecting, then a few round trips.
    fn op_timeout(&self) -> Duration {
        let c = self.config();
        c.connect_timeout
            .saturating_add(c.response_timeout.saturating_mul(4))
    }

    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.block_for(self.op_timeout(), fut)
    }

    /// Runs `fut` on the store's runtime and waits for it, at most `limit`.
    fn block_for<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let remote = Arc::clone(&self.inner.remote);
        self.inner.runtime.spawn(async move {
            let out = match tokio::time::timeout(limit, fut).await {
                Ok(out) => out,
                Err(_) => Err(remote.timed_out(limit)),
            };
            let _ = tx.send(out);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(self
                .inner
                .remote
                .other("the client's I/O thread has stopped"))
        })
    }
}

impl UserStorageService for RedisStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        RedisStore::get(self, user_id, campaign_key)
    }

    /// Stores `map` under the fleet rule (see [`RedisStore::set_merged`]).
    fn set(&self, map: &CampaignUserMap) -> Result<()> {
        RedisStore::set_merged(self, map).map(drop)
    }
}

impl FeatureStorage for RedisStore {
    fn get_feature(&self, feature_key: &str, user_id: &str) -> Result<Option<FeatureRecord>> {
        RedisStore::get_feature(self, feature_key, user_id)
    }

    /// Replaces the record (see [`RedisStore::set_feature`]).
    fn set_feature(&self, record: &FeatureRecord) -> Result<()> {
        RedisStore::set_feature(self, record)
    }
}

impl Remote {
    /// The connection, made now if there is none yet.
    async fn conn(&self) -> Result<Conn> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = self.connect().await.map_err(|e| self.fail("connect", e))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let c = &self.config;
        if c.cluster {
            let client = ClusterClientBuilder::new(c.urls.clone())
                .connection_timeout(c.connect_timeout)
                .response_timeout(c.response_timeout)
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let url = c.urls.first().map(String::as_str).unwrap_or_default();
            let client = redis::Client::open(url)?;
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(c.connect_timeout))
                .set_response_timeout(Some(c.response_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(500));
            Ok(Conn::Single(
                ConnectionManager::new_with_config(client, manager).await?,
            ))
        }
    }

    /// Runs `cmd` on the connection.
    async fn query<T: redis::FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T> {
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.fail(what, e))
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.query("PING", &redis::cmd("PING")).await?;
        Ok(())
    }

    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.query("GET", redis::cmd("GET").arg(key)).await
    }

    /// A plain `SET`, with the configured time to live.
    async fn set_raw(&self, key: &str, value: &str) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        let ttl = self.config.ttl_millis();
        if ttl > 0 {
            cmd.arg("PX").arg(ttl);
        }
        let _: () = self.query("SET", &cmd).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let n: i64 = self.query("DEL", redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    async fn cas(&self, key: &str, expected: Option<&[u8]>, new: &str) -> Result<Cas> {
        let mut conn = self.conn().await?;
        let mut call = self.cas.key(key);
        match expected {
            None => call.arg("0").arg(""),
            Some(v) => call.arg("1").arg(v),
        };
        call.arg(new).arg(self.config.ttl_millis().to_string());
        let reply: Vec<Value> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail("the compare-and-set script", e))?;
        match reply.as_slice() {
            [Value::Int(1)] => Ok(Cas::Written),
            [Value::Int(0)] => Ok(Cas::Absent),
            [Value::Int(2), Value::BulkString(v)] => Ok(Cas::Holds(v.clone())),
            other => Err(Error::backend(
                BACKEND,
                BackendErrorKind::InvalidData,
                self.target.clone(),
                format!("unexpected reply to the compare-and-set script for key {key}: {other:?}"),
            )),
        }
    }

    /// The first round of [`Remote::merge`] for many maps on a standalone server: every key's `SET NX` in one
    /// pipeline, one write and one read for the lot instead of a round trip each (the shipper's batches are
    /// mostly first assignments). True for each map written; `None` on a Cluster, whose keys live on several
    /// nodes.
    async fn create_many(&self, maps: &[CampaignUserMap]) -> Result<Option<Vec<bool>>> {
        let mut conn = self.conn().await?;
        if matches!(conn, Conn::Cluster(_)) {
            return Ok(None);
        }
        let ttl = self.config.ttl_millis();
        let mut pipe = redis::pipe();
        for map in maps {
            let key = self.config.key(&map.user_id, &map.campaign_key);
            pipe.cmd("SET")
                .arg(key)
                .arg(value::encode_new(map))
                .arg("NX");
            if ttl > 0 {
                pipe.arg("PX").arg(ttl);
            }
        }
        let written: Vec<Option<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail("a pipeline of SET NX", e))?;
        if written.len() != maps.len() {
            return Err(self.other("a pipeline of SET NX answered another number of replies"));
        }
        Ok(Some(written.iter().map(Option::is_some).collect()))
    }

    /// The fleet rule, made atomic with compare-and-set: write the map if the key is new, else merge it into
    /// what the key holds and write that only if the key still holds what was merged.
    async fn merge(&self, map: &CampaignUserMap) -> Result<CampaignUserMap> {
        // The first round assumes the key is new: one round trip for a first assignment.
        self.merge_from(map, None).await
    }

    /// [`Remote::merge`] of a key known to exist (its `SET NX` failed): its value is read first.
    async fn merge_existing(&self, map: &CampaignUserMap) -> Result<CampaignUserMap> {
        let key = self.config.key(&map.user_id, &map.campaign_key);
        let current = self.get_raw(&key).await?;
        self.merge_from(map, current).await
    }

    /// The rounds of [`Remote::merge`], the first one assuming the key holds `current`.
    async fn merge_from(
        &self,
        map: &CampaignUserMap,
        mut current: Option<Vec<u8>>,
    ) -> Result<CampaignUserMap> {
        let key = self.config.key(&map.user_id, &map.campaign_key);
        let fresh = value::encode_new(map);
        let refresh_ttl = self.config.ttl.is_some();
        for _ in 0..MAX_CAS_ROUNDS {
            let (write, result) = match &current {
                None => (fresh.clone(), map.clone()),
                Some(bytes) => {
                    let stored = value::decode(&key, bytes, &map.user_id, &map.campaign_key)?;
                    let merged = value::first_wins(&stored, map);
                    if merged == stored {
                        if !refresh_ttl {
                            return Ok(stored);
                        }
                        // Written again as it is, only to restart its time to live.
                        (String::from_utf8_lossy(bytes).into_owned(), stored)
                    } else {
                        (value::rewrite(&key, bytes, &merged)?, merged)
                    }
                }
            };
            match self.cas(&key, current.as_deref(), &write).await? {
                Cas::Written => return Ok(result),
                Cas::Absent => current = None,
                Cas::Holds(v) => current = Some(v),
            }
        }
        Err(Error::backend(
            BACKEND,
            BackendErrorKind::Other,
            key,
            format!("the key kept changing during {MAX_CAS_ROUNDS} compare-and-set rounds"),
        ))
    }

    /// The masters of a Cluster as (host, port), from `CLUSTER NODES`.
    async fn masters(&self) -> Result<Vec<(String, u16)>> {
        let text: String = self
            .query("CLUSTER NODES", redis::cmd("CLUSTER").arg("NODES"))
            .await?;
        let mut masters = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master")
                || flags.split(',').any(|f| f == "fail" || f == "noaddr")
            {
                continue;
            }
            let addr = addr.split(['@', ',']).next().unwrap_or_default();
            if let Some((host, port)) = addr.rsplit_once(':')
                && let Ok(port) = port.parse::<u16>()
            {
                masters.push((host.to_owned(), port));
            }
        }
        Ok(masters)
    }

    /// One `SCAN` call, on `node` for a Cluster.
    async fn scan_page(
        &self,
        node: Option<&(String, u16)>,
        cursor: u64,
        pattern: &str,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        match (self.conn().await?, node) {
            (Conn::Cluster(mut c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let reply = c
                    .route_command(cmd, routing)
                    .await
                    .map_err(|e| self.fail("SCAN", e))?;
                redis::from_redis_value(reply).map_err(|e| self.fail("SCAN", RedisError::from(e)))
            }
            (mut conn, _) => cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("SCAN", e)),
        }
    }

    /// A failure of the client, as an [`Error::Backend`] with passwords scrubbed from the message.
    fn fail(&self, what: &str, e: RedisError) -> Error {
        let kind = kind_of(&e);
        if kind == BackendErrorKind::Unavailable
            && self.config.cluster
            && let Ok(mut slot) = self.slot.try_lock()
        {
            // A cluster connection whose every node went away is rebuilt from the seeds on the next call.
            *slot = None;
        }
        let mut message = format!("{what}: {e}");
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "***");
        }
        Error::backend(BACKEND, kind, self.target.clone(), message)
    }

    fn timed_out(&self, limit: Duration) -> Error {
        Error::backend(
            BACKEND,
            BackendErrorKind::Timeout,
            self.target.clone(),
            format!("no answer within {limit:?}"),
        )
    }

    fn other(&self, reason: &str) -> Error {
        Error::backend(
            BACKEND,
            BackendErrorKind::Other,
            self.target.clone(),
            reason.to_owned(),
        )
    }
}

/// What a caller can do about a client error.
fn kind_of(e: &RedisError) -> BackendErrorKind {
    if e.is_timeout() {
        return BackendErrorKind::Timeout;
    }
    match e.code() {
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => return BackendErrorKind::Refused,
        Some("WRONGTYPE") => return BackendErrorKind::InvalidData,
        Some("LOADING" | "CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "BUSY" | "READONLY") => {
            return BackendErrorKind::Unavailable;
        }
        _ => {}
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => BackendErrorKind::Refused,
        ErrorKind::InvalidClientConfig => BackendErrorKind::Config,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::InvalidData,
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => BackendErrorKind::Unavailable,
        _ if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error() =>
        {
            BackendErrorKind::Unavailable
        }
        _ => BackendErrorKind::Other,
    }
}

/// The ids a key can be made of: the same limits as the local store's.
pub(crate) fn check_ids(user_id: &str, campaign_key: &str) -> Result<()> {
    check_named([("user_id", user_id), ("campaign_key", campaign_key)])
}

/// Each id must be non-empty and at most [`MAX_ID_LEN`] bytes; the error names the field.
fn check_named(ids: [(&'static str, &str); 2]) -> Result<()> {
    for (field, id) in ids {
        let reason = if id.is_empty() {
            "must not be empty".to_owned()
        } else if id.len() > MAX_ID_LEN {
            format!("is {} bytes long, the limit is {MAX_ID_LEN}", id.len())
        } else {
            continue;
        };
        return Err(Error::InvalidKey {
            field,
            key: id.chars().take(64).collect(),
            reason,
        });
    }
    Ok(())
}

/// The ids an FME record's key can be made of: the same limits as the local store's.
fn check_feature_ids(feature_key: &str, user_id: &str) -> Result<()> {
    check_named([("feature_key", feature_key), ("user_id", user_id)])
}

/// True when `key` is under the FME segment and holds an FME record rather than a campaign mapping: the keys a
/// scan of campaign mappings passes over.
fn is_feature_record(config: &RedisConfig, key: &str, bytes: &[u8]) -> bool {
    !config.feature_prefix.is_empty()
        && key
            .strip_prefix(config.key_prefix.as_str())
            .is_some_and(|rest| rest.starts_with(config.feature_prefix.as_str()))
        && value::decode_any(key, bytes).is_err()
        && std::str::from_utf8(bytes).is_ok_and(|text| FeatureRecord::from_json(text).is_ok())
}

/// `s` with the glob characters of `SCAN MATCH` escaped, so a key prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every mapping of a keyspace, from [`RedisStore::scan`].
pub struct RedisScan {
    store: RedisStore,
    pattern: String,
    /// The nodes to walk: `[None]` for a standalone server, each master of a Cluster; listed on first use.
    nodes: Option<Vec<Option<(String, u16)>>>,
    node: usize,
    cursor: u64,
    ready: VecDeque<Result<CampaignUserMap>>,
    done: bool,
}

impl std::fmt::Debug for RedisScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScan")
            .field("target", &self.store.target())
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl RedisScan {
    /// Reads the next page of keys and their values into `ready`.
    fn fetch(&mut self) -> Result<()> {
        let nodes = match &self.nodes {
            Some(nodes) => nodes.clone(),
            None => {
                let nodes = if self.store.config().cluster {
                    let remote = Arc::clone(&self.store.inner.remote);
                    self.store
                        .block(async move { remote.masters().await })?
                        .into_iter()
                        .map(Some)
                        .collect()
                } else {
                    vec![None]
                };
                self.nodes = Some(nodes.clone());
                nodes
            }
        };
        let Some(node) = nodes.get(self.node).cloned() else {
            self.done = true;
            return Ok(());
        };
        let remote = Arc::clone(&self.store.inner.remote);
        let (cursor, pattern) = (self.cursor, self.pattern.clone());
        let (next, keys) = self
            .store
            .block(async move { remote.scan_page(node.as_ref(), cursor, &pattern).await })?;
        let keys: Vec<String> = keys
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .collect();
        let remote = Arc::clone(&self.store.inner.remote);
        let values = self.store.block(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, key) in keys.into_iter().enumerate() {
                let remote = Arc::clone(&remote);
                tasks.spawn(async move {
                    let raw = remote.get_raw(&key).await;
                    (i, key, raw)
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                if let Ok(item) = joined {
                    out.push(item);
                }
            }
            out.sort_by_key(|(i, _, _)| *i);
            Ok(out)
        })?;
        let config = self.store.config();
        for (_, key, raw) in values {
            match raw {
                Ok(None) => {}
                Ok(Some(bytes)) if is_feature_record(config, &key, &bytes) => {}
                Ok(Some(bytes)) => self.ready.push_back(
                    value::decode_any(&key, &bytes).and_then(|map| {
                        if config.key(&map.user_id, &map.campaign_key) == key {
                            Ok(map)
                        } else {
                            Err(Error::backend(
                                BACKEND,
                                BackendErrorKind::InvalidData,
                                key,
                                format!(
                                    "the value is the mapping of user {:?} in campaign {:?}, which belongs \
                                     under another key",
                                    map.user_id, map.campaign_key
                                ),
                            ))
                        }
                    }),
                ),
                Err(e) => self.ready.push_back(Err(e)),
            }
        }
        self.cursor = next;
        if next == 0 {
            self.node += 1;
        }
        Ok(())
    }
}

impl Iterator for RedisScan {
    type Item = Result<CampaignUserMap>;

    fn next(&mut self) -> Option<Result<CampaignUserMap>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fetch() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
