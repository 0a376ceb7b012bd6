//! Python binding of ussdb.
//!
//! `ussdb.Store` exposes the engine; `ussdb.UserStorage` is the object the VWO Python SDK
//! (`vwo.launch(..., user_storage=...)`) calls. That SDK reads and writes the goal list under
//! `goalIdentifiers` (plural), while the engine's record and its JSON call it `goalIdentifier`:
//! `UserStorage` translates, `Store` speaks the engine's shape. `ussdb.FmeStorage` is the connector the
//! current VWO FME Python SDK (`vwo-fme-python-sdk`, `vwo.init({..., "storage": ...})`) calls.

mod durable;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

pyo3::create_exception!(
    ussdb,
    Error,
    PyException,
    "Raised when the ussdb engine reports an error; str(e) is the engine's message."
);

fn engine_error(e: ussdb::Error) -> PyErr {
    Error::new_err(e.to_string())
}

fn closed_error() -> PyErr {
    Error::new_err("store is closed")
}

/// Bumped in the child after every `os.fork()`. A forked child shares the parent's open files and
/// its directory lock but not its engine state or its fsync thread, so two processes writing one
/// log through copies of one engine would corrupt it: a `Store` opened before a fork refuses work
/// in the child (prefork servers such as gunicorn must open the store after forking).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

#[pyfunction]
fn _after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

fn forked_error(path: &std::path::Path) -> PyErr {
    Error::new_err(format!(
        "the store at {} was opened before this process was forked; open it after forking, in the process \
         that uses it (gunicorn: in the post_fork hook or lazily in the worker; uWSGI: lazy-apps = true)",
        path.display()
    ))
}

/// The engine's own reading of a durability name (`"periodic"` fsyncs every
/// [`ussdb::DEFAULT_PERIODIC_INTERVAL`], as the CLI's does), so it promises the same everywhere.
fn parse_durability(s: &str) -> PyResult<ussdb::Durability> {
    s.parse()
        .map_err(|e: ussdb::Error| PyValueError::new_err(e.to_string()))
}

/// Which key holds the goal list in the dicts a class hands out.
#[derive(Clone, Copy)]
enum Shape {
    /// The engine's own shape (`goalIdentifier`), as in its JSON export.
    Engine,
    /// What the VWO Python SDK reads (`goalIdentifiers`).
    Vwo,
}

/// Builds a record dict from the key objects and the engine's answer. `get` passes the caller's own
/// key strings (equal to the stored ones, since the engine matched them): skipping two string
/// allocations is a visible part of a get's cost.
fn record_dict<'py>(
    user_id: &Bound<'py, PyAny>,
    campaign_key: &Bound<'py, PyAny>,
    variation_name: String,
    goal_identifier: Option<String>,
    shape: Shape,
) -> PyResult<Bound<'py, PyDict>> {
    let py = user_id.py();
    let d = PyDict::new(py);
    d.set_item(intern!(py, "userId"), user_id)?;
    d.set_item(intern!(py, "campaignKey"), campaign_key)?;
    d.set_item(intern!(py, "variationName"), variation_name)?;
    if let Some(goals) = goal_identifier {
        let key = match shape {
            Shape::Engine => intern!(py, "goalIdentifier"),
            Shape::Vwo => intern!(py, "goalIdentifiers"),
        };
        d.set_item(key, goals)?;
    }
    Ok(d)
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// A str field as an owned String; a non-str is a TypeError naming the field, while a str without a
/// UTF-8 form (a lone surrogate) keeps Python's own UnicodeEncodeError.
fn field_str(key: &Bound<'_, PyString>, v: &Bound<'_, PyAny>, expected: &str) -> PyResult<String> {
    match v.cast::<PyString>() {
        Ok(s) => Ok(s.to_str()?.to_owned()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{key} must be {expected}, not {}",
            type_name(v)
        ))),
    }
}

/// The value of `field` in `data` under any of the names the SDKs write it under (the engine's one table,
/// [`ussdb::SdkField`]), trying `first` before the others; `None` when absent or `None`.
fn field_value<'py>(
    data: &Bound<'py, PyDict>,
    field: ussdb::SdkField,
    first: &Bound<'py, PyString>,
) -> PyResult<Option<(Bound<'py, PyString>, Bound<'py, PyAny>)>> {
    if let Some(v) = data.get_item(first)?
        && !v.is_none()
    {
        return Ok(Some((first.clone(), v)));
    }
    let py = data.py();
    for name in field.names() {
        if first.to_str().is_ok_and(|f| f == *name) {
            continue;
        }
        let key = PyString::intern(py, name);
        if let Some(v) = data.get_item(&key)?
            && !v.is_none()
        {
            return Ok(Some((key, v)));
        }
    }
    Ok(None)
}

fn required_str(
    data: &Bound<'_, PyDict>,
    field: ussdb::SdkField,
    first: &Bound<'_, PyString>,
) -> PyResult<String> {
    match field_value(data, field, first)? {
        Some((key, v)) => field_str(&key, &v, "a str"),
        None => Err(PyValueError::new_err(format!(
            "missing key {first:?} in the record (also accepted: {})",
            field.names().join(", ")
        ))),
    }
}

/// Reads a record in any SDK's key style, so that what `Store.get` or the SDK produced can be fed back.
/// `goalIdentifiers` is tried first because that is the key the VWO Python SDK updates.
fn dict_to_record(data: &Bound<'_, PyDict>) -> PyResult<ussdb::CampaignUserMap> {
    use ussdb::SdkField;
    let py = data.py();
    let goal_identifier = match field_value(
        data,
        SdkField::GoalIdentifier,
        intern!(py, "goalIdentifiers"),
    )? {
        Some((key, v)) => Some(field_str(&key, &v, "a str or None")?),
        None => None,
    };
    Ok(ussdb::CampaignUserMap {
        user_id: required_str(data, SdkField::UserId, intern!(py, "userId"))?,
        campaign_key: required_str(data, SdkField::CampaignKey, intern!(py, "campaignKey"))?,
        variation_name: required_str(data, SdkField::VariationName, intern!(py, "variationName"))?,
        goal_identifier,
    })
}

/// The FME record as the dict the FME SDK reads: `json.loads` of its camelCase JSON, so ids come back as the
/// int (or float) they went in as, `None` stays `None`, and members the record keeps untyped come back as
/// they were given.
fn feature_dict<'py>(py: Python<'py>, rec: &ussdb::FeatureRecord) -> PyResult<Bound<'py, PyDict>> {
    let loaded = py
        .import(intern!(py, "json"))?
        .call_method1(intern!(py, "loads"), (rec.to_json(),))?;
    loaded
        .cast_into::<PyDict>()
        .map_err(|_| PyTypeError::new_err("an FME record's JSON is not an object"))
}

/// Reads the dict the FME SDK passes to `set` (any object `json.dumps` takes, which must be a dict) through the
/// engine's one reader of the record, [`ussdb::FeatureRecord::from_json`]. A bad record is a ValueError.
fn dict_to_feature(data: &Bound<'_, PyAny>) -> PyResult<ussdb::FeatureRecord> {
    let py = data.py();
    if !data.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(format!(
            "an FME record must be a dict, not {}",
            type_name(data)
        )));
    }
    let kwargs = PyDict::new(py);
    // NaN and infinities are not JSON: refuse them instead of storing text no SDK could read back.
    kwargs.set_item(intern!(py, "allow_nan"), false)?;
    let text = py.import(intern!(py, "json"))?.call_method(
        intern!(py, "dumps"),
        (data,),
        Some(&kwargs),
    )?;
    let text = text
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("json.dumps did not return a str"))?;
    ussdb::FeatureRecord::from_json(text.to_str()?)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

fn stats_to_dict<'py>(py: Python<'py>, s: &ussdb::Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("mappings", s.mappings)?;
    d.set_item("segments", s.segments)?;
    d.set_item("disk_bytes", s.disk_bytes)?;
    d.set_item("live_bytes", s.live_bytes)?;
    d.set_item("dead_bytes", s.dead_bytes)?;
    d.set_item("space_amplification", s.space_amplification)?;
    d.set_item("index_heap_bytes", s.index_heap_bytes)?;
    d.set_item("sets", s.sets)?;
    d.set_item("deletes", s.deletes)?;
    d.set_item("fsyncs", s.fsyncs)?;
    d.set_item("compactions", s.compactions)?;
    d.set_item(
        "last_compaction_seconds",
        s.last_compaction.map(|t| t.as_secs_f64()),
    )?;
    d.set_item("reclaimed_bytes", s.reclaimed_bytes)?;
    d.set_item("hint_files", s.hint_files)?;
    d.set_item("index_loaded", s.index_loaded)?;
    Ok(d)
}

/// Runs `f` with the GIL released on what `inner` holds (a store or a tier), unless this is a
/// forked child's copy or it was closed. Calls hold the read side, so `close` (the write side)
/// waits for them instead of pulling the handle from under a running call.
fn call_open<S, T, F>(
    py: Python<'_>,
    forked: bool,
    path: &std::path::Path,
    inner: &RwLock<Option<S>>,
    f: F,
) -> PyResult<T>
where
    S: Send + Sync,
    T: Send,
    F: FnOnce(&S) -> ussdb::Result<T> + Send,
{
    if forked {
        return Err(forked_error(path));
    }
    let out = py.detach(|| {
        let guard = inner.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(f)
    });
    match out {
        Some(r) => r.map_err(engine_error),
        None => Err(closed_error()),
    }
}

/// An open ussdb directory. Thread-safe: share one `Store` between threads; the GIL is released
/// while the engine works.
#[pyclass(frozen, module = "ussdb", name = "Store")]
struct Store {
    // `None` once closed. Engine calls hold the read side, so `close` waits for them to finish
    // instead of pulling the store from under a running call.
    inner: RwLock<Option<ussdb::Store>>,
    path: PathBuf,
    /// `FORK_GENERATION` when opened; any other value means this is a forked child's copy.
    fork_generation: u64,
}

impl Store {
    fn forked(&self) -> bool {
        FORK_GENERATION.load(Ordering::Relaxed) != self.fork_generation
    }

    /// Runs `f` on the open engine with the GIL released.
    fn call<T, F>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(&ussdb::Store) -> ussdb::Result<T> + Send,
    {
        call_open(py, self.forked(), &self.path, &self.inner, f)
    }

    fn get_shaped<'py>(
        &self,
        user_id: &Bound<'py, PyString>,
        campaign_key: &Bound<'py, PyString>,
        shape: Shape,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let py = user_id.py();
        let (u, c) = (user_id.to_str()?, campaign_key.to_str()?);
        match self.call(py, |s| s.get(u, c))? {
            Some(map) => record_dict(
                user_id.as_any(),
                campaign_key.as_any(),
                map.variation_name,
                map.goal_identifier,
                shape,
            )
            .map(Some),
            None => Ok(None),
        }
    }

    fn set_dict(&self, data: &Bound<'_, PyDict>) -> PyResult<()> {
        let record = dict_to_record(data)?;
        self.call(data.py(), |s| s.set(&record))
    }
}

#[pymethods]
impl Store {
    /// Opens (creating if needed) the store in directory `path`.
    ///
    /// durability: "periodic" (default; `set` returns after write(2), fsync every 100 ms),
    /// "immediate" (`set` returns after fsync) or "never" (the OS writes back when it likes).
    /// compaction_threshold: dead fraction of a sealed segment that triggers background compaction
    /// (engine default 0.5); auto_compaction=False leaves compaction to `compact()`.
    /// shared (default True): the multi-process mode, so the worker processes of gunicorn or uWSGI open one
    /// directory together; False takes the directory for this process alone.
    #[new]
    #[pyo3(signature = (
        path,
        durability = "periodic",
        segment_size = None,
        *,
        compaction_threshold = None,
        auto_compaction = true,
        shared = true
    ))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        durability: &str,
        segment_size: Option<u64>,
        compaction_threshold: Option<f64>,
        auto_compaction: bool,
        shared: bool,
    ) -> PyResult<Self> {
        let mut options = ussdb::Options::default()
            .durability(parse_durability(durability)?)
            .auto_compaction(auto_compaction)
            .shared(shared);
        if let Some(bytes) = segment_size {
            options = options.segment_size(bytes);
        }
        if let Some(ratio) = compaction_threshold {
            options = options.compaction_threshold(ratio);
        }
        let dir = path.clone();
        let store = py
            .detach(move || ussdb::Store::open_with(dir, options))
            .map_err(engine_error)?;
        Ok(Store {
            inner: RwLock::new(Some(store)),
            path,
            fork_generation: FORK_GENERATION.load(Ordering::Relaxed),
        })
    }

    /// The record as a dict {"userId", "campaignKey", "variationName"[, "goalIdentifier"]}, or None.
    fn get<'py>(
        &self,
        user_id: &Bound<'py, PyString>,
        campaign_key: &Bound<'py, PyString>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.get_shaped(user_id, campaign_key, Shape::Engine)
    }

    /// Stores a record given as a dict with "userId", "campaignKey", "variationName" and optionally
    /// "goalIdentifier" (or the VWO SDK's "goalIdentifiers"); other keys are ignored.
    fn set(&self, data: &Bound<'_, PyDict>) -> PyResult<()> {
        self.set_dict(data)
    }

    /// Stores a record like `set` at once and returns an awaitable that completes when the write is
    /// durable: under "immediate", when the group commit covering it has fsynced (many writes in
    /// flight share one fsync; no thread waits per write); under "periodic" and "never", at once.
    /// Raises the write's ussdb.Error if it failed. Call it from a coroutine on a running asyncio loop.
    fn set_async<'py>(&self, data: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let py = data.py();
        let record = dict_to_record(data)?;
        // Before the write: outside a running loop nothing is written.
        let event_loop = durable::running_loop(py)?;
        let written = self.call(py, |s| Ok(s.set_async(&record)))?;
        durable::awaitable(py, event_loop, written)
    }

    /// Erases one record; True if it existed.
    fn delete(&self, py: Python<'_>, user_id: &str, campaign_key: &str) -> PyResult<bool> {
        self.call(py, |s| s.delete(user_id, campaign_key))
    }

    /// Erases every record of a user; returns how many there were.
    fn forget_user(&self, py: Python<'_>, user_id: &str) -> PyResult<usize> {
        self.call(py, |s| s.forget_user(user_id))
    }

    /// Every record of a user, as dicts shaped like `get`'s.
    fn campaigns_of<'py>(&self, py: Python<'py>, user_id: &str) -> PyResult<Bound<'py, PyList>> {
        let maps = self.call(py, |s| s.campaigns_of(user_id))?;
        let list = PyList::empty(py);
        for m in maps {
            let user_id = PyString::new(py, &m.user_id);
            let campaign_key = PyString::new(py, &m.campaign_key);
            list.append(record_dict(
                user_id.as_any(),
                campaign_key.as_any(),
                m.variation_name,
                m.goal_identifier,
                Shape::Engine,
            )?)?;
        }
        Ok(list)
    }

    /// The FME record of `user_id` for `feature_key` as the dict the FME SDK reads, or None.
    fn get_feature<'py>(
        &self,
        py: Python<'py>,
        feature_key: &str,
        user_id: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        match self.call(py, |s| s.get_feature(feature_key, user_id))? {
            Some(rec) => feature_dict(py, &rec).map(Some),
            None => Ok(None),
        }
    }

    /// Stores an FME record given as the dict the FME SDK passes to its connector's `set` (with
    /// "featureKey" and "userId"); every member comes back from `get_feature` as it went in.
    fn set_feature(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let rec = dict_to_feature(data)?;
        self.call(data.py(), |s| s.set_feature(&rec))
    }

    /// Erases one FME record; True if it existed.
    fn delete_feature(&self, py: Python<'_>, feature_key: &str, user_id: &str) -> PyResult<bool> {
        self.call(py, |s| s.delete_feature(feature_key, user_id))
    }

    /// Every FME record of a user (group records included), as dicts shaped like `get_feature`'s.
    fn features_of<'py>(&self, py: Python<'py>, user_id: &str) -> PyResult<Bound<'py, PyList>> {
        let records = self.call(py, |s| s.features_of(user_id))?;
        let list = PyList::empty(py);
        for rec in &records {
            list.append(feature_dict(py, rec)?)?;
        }
        Ok(list)
    }

    /// How many FME records the store holds (walks the store).
    fn count_features(&self, py: Python<'_>) -> PyResult<u64> {
        self.call(py, |s| s.count_features())
    }

    /// Returns once everything written so far is on disk.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |s| s.sync())
    }

    /// Compacts now and returns when done: rewrites the segments that hold overwritten or deleted
    /// records, whatever `compaction_threshold` says. Reads and writes go on meanwhile.
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |s| s.compact())
    }

    /// Engine counters as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.call(py, |s| Ok(s.stats()))?;
        stats_to_dict(py, &stats)
    }

    /// Syncs and closes; later calls raise ussdb.Error. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.forked() {
            // A forked child's copy: dropping it neither syncs nor joins the parent's threads (the
            // engine knows it is in a child); it only closes the child's descriptors, so the child
            // stops holding the parent's locks.
            let taken = self
                .inner
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            py.detach(move || drop(taken));
            return Ok(());
        }
        py.detach(|| {
            let taken = self
                .inner
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            // Sync even under "never": a caller who closes expects the data to be on disk.
            match taken {
                Some(store) => store.sync(),
                None => Ok(()),
            }
        })
        .map_err(engine_error)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { "closed" } else { "open" };
        format!("<ussdb.Store {:?} {state}>", self.path)
    }
}

/// The user storage for the VWO Python SDK: `vwo.launch(settings, user_storage=ussdb.UserStorage(path))`.
///
/// `get` returns None or {"userId", "campaignKey", "variationName"[, "goalIdentifiers"]}, the shape
/// the SDK reads; `set` takes the dict the SDK passes. Built on a path, it opens its own `Store`;
/// built on a `Store`, it shares it. Either way `close()` closes that `Store`.
///
/// With `redis_url` (or `redis_cluster`, a list of seed URLs) it is a server's share of a fleet's
/// storage (docs/GUIDE.md, "Running a fleet"): the local store at `path` in front of Redis, reads
/// local once Redis has confirmed a mapping, writes local and durable, shipped to Redis in the
/// background, the first assignment of a user winning across every server.
#[pyclass(frozen, module = "ussdb", name = "UserStorage")]
struct UserStorage {
    store: Py<Store>,
    /// The fleet tier, when built with a Redis.
    tier: Option<Tier>,
}

/// A `ussdb::Tiered` that `close()` can stop, and that a forked child leaves alone (like `Store`).
struct Tier {
    inner: RwLock<Option<ussdb::Tiered>>,
    path: PathBuf,
    fork_generation: u64,
}

impl Drop for Tier {
    fn drop(&mut self) {
        if FORK_GENERATION.load(Ordering::Relaxed) != self.fork_generation {
            // Dropping would join a shipper thread that exists only in the parent.
            let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
            std::mem::forget(inner.take());
        }
    }
}

impl Tier {
    fn call<T, F>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(&ussdb::Tiered) -> ussdb::Result<T> + Send,
    {
        let forked = FORK_GENERATION.load(Ordering::Relaxed) != self.fork_generation;
        call_open(py, forked, &self.path, &self.inner, f)
    }

    fn close(&self, py: Python<'_>) {
        let tier = py.detach(|| {
            self.inner
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        });
        // Stops the shipper (what still waits stays in the local outbox, for the next open).
        py.detach(move || drop(tier));
    }
}

fn tier_stats_dict<'py>(py: Python<'py>, s: &ussdb::TierStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("outbox_depth", s.outbox_depth)?;
    d.set_item("replay_lag_seconds", s.replay_lag.map(|t| t.as_secs_f64()))?;
    d.set_item("shipped", s.shipped)?;
    d.set_item("redis_errors", s.redis_errors)?;
    d.set_item("local_hits", s.local_hits)?;
    d.set_item("remote_hits", s.remote_hits)?;
    d.set_item("misses", s.misses)?;
    d.set_item("degraded", s.degraded)?;
    d.set_item("redis_available", s.redis_available)?;
    d.set_item("hit_ratio", s.hit_ratio())?;
    Ok(d)
}

/// How a tier ships to Redis: `UserStorage`'s `ship_batch` and `retry_max` (defaults: the library's).
struct Shipping {
    batch: Option<usize>,
    retry_max: Option<f64>,
}

/// The most worker directories `UserStorage(..., per_worker=True)` takes under one path.
const MAX_WORKERS: usize = 256;

/// Opens the tier at `path` with Redis at `redis_url` or the Cluster of `redis_cluster`; with `per_worker`, in
/// the first free worker directory under `path`.
#[allow(clippy::too_many_arguments)]
fn open_tier(
    py: Python<'_>,
    path: PathBuf,
    durability: &str,
    segment_size: Option<u64>,
    redis_url: Option<String>,
    redis_cluster: Option<Vec<String>>,
    fresh_for: Option<f64>,
    key_prefix: Option<String>,
    per_worker: bool,
    shipping: Shipping,
) -> PyResult<(Tier, Store)> {
    let mut config = match (redis_url, redis_cluster) {
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err(
                "give redis_url (one server) or redis_cluster (a Cluster's seed nodes), not both",
            ));
        }
        (Some(url), None) => ussdb::RedisConfig::new(url),
        (None, Some(seeds)) if seeds.is_empty() => {
            return Err(PyValueError::new_err(
                "redis_cluster needs at least one seed URL",
            ));
        }
        (None, Some(seeds)) => ussdb::RedisConfig::cluster(seeds),
        (None, None) => return Err(PyValueError::new_err("no Redis given")),
    };
    if let Some(prefix) = key_prefix {
        config = config.key_prefix(prefix);
    }
    let mut local = ussdb::Options::default().durability(parse_durability(durability)?);
    if let Some(bytes) = segment_size {
        local = local.segment_size(bytes);
    }
    let mut options = ussdb::TierOptions::default().local(local);
    if let Some(secs) = fresh_for {
        let fresh = std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
            PyValueError::new_err(format!("fresh_for must be seconds >= 0, not {secs}"))
        })?;
        options = options.fresh_for(fresh);
    }
    if let Some(mappings) = shipping.batch {
        if mappings == 0 {
            return Err(PyValueError::new_err("ship_batch must be at least 1"));
        }
        options = options.ship_batch(mappings);
    }
    if let Some(secs) = shipping.retry_max {
        let wait = std::time::Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|w| !w.is_zero())
            .ok_or_else(|| {
                PyValueError::new_err(format!("retry_max must be seconds > 0, not {secs}"))
            })?;
        options = options.retry_max(wait);
    }
    let dir = path.clone();
    let tier = py
        .detach(move || {
            if per_worker {
                ussdb::Tiered::open_worker(dir, config, options, MAX_WORKERS)
            } else {
                ussdb::Tiered::open_with(dir, config, options)
            }
        })
        .map_err(|e| match e {
            ussdb::Error::Locked { .. } if per_worker => Error::new_err(format!(
                "{e}: all {MAX_WORKERS} worker directories are in use"
            )),
            // The first thing a user of a prefork server meets: say what to do, not only what happened.
            ussdb::Error::Locked { .. } => Error::new_err(format!(
                "{e}; a Redis tier's local store belongs to one process (its outbox of changes for Redis \
                 lives there): give each worker process a directory of its own, which per_worker=True does \
                 (path/worker-N, the first free one), since Redis keeps the fleet's truth"
            )),
            e => engine_error(e),
        })?;
    // With per_worker, the store is in the worker directory the tier took.
    let path = tier.local().path().to_path_buf();
    let fork_generation = FORK_GENERATION.load(Ordering::Relaxed);
    // The same engine, for `UserStorage.store` (stats, sync); writes through it are not shipped.
    let store = Store {
        inner: RwLock::new(Some(tier.local().clone())),
        path: path.clone(),
        fork_generation,
    };
    Ok((
        Tier {
            inner: RwLock::new(Some(tier)),
            path,
            fork_generation,
        },
        store,
    ))
}

#[pymethods]
impl UserStorage {
    /// redis_url: "redis://[user][:password]@host:port[/db]" of the fleet's Redis or Valkey;
    /// redis_cluster: a Cluster's seed URLs instead. fresh_for: seconds a local copy confirmed by
    /// Redis is used without asking it again (default 5; bounds how long another server's goal
    /// can stay unseen here). redis_key_prefix: put before every key (default none, as VWO's
    /// Redis helpers write). per_worker: for servers with several worker processes (gunicorn,
    /// uWSGI): each process takes the first free directory path/worker-N (a restarted worker takes
    /// one a stopped worker left, and ships what it left waiting); the workers share Redis.
    /// ship_batch: how many mappings the shipper sends to Redis at once (default 256).
    /// retry_max: the longest wait in seconds between two attempts to reach Redis while it is
    /// down (default 2; the wait starts at 0.05 and doubles).
    #[new]
    #[pyo3(signature = (
        path_or_store,
        durability = "periodic",
        segment_size = None,
        *,
        redis_url = None,
        redis_cluster = None,
        fresh_for = None,
        redis_key_prefix = None,
        per_worker = false,
        ship_batch = None,
        retry_max = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path_or_store: &Bound<'_, PyAny>,
        durability: &str,
        segment_size: Option<u64>,
        redis_url: Option<String>,
        redis_cluster: Option<Vec<String>>,
        fresh_for: Option<f64>,
        redis_key_prefix: Option<String>,
        per_worker: bool,
        ship_batch: Option<usize>,
        retry_max: Option<f64>,
    ) -> PyResult<Self> {
        let fleet = redis_url.is_some() || redis_cluster.is_some();
        if let Ok(store) = path_or_store.cast::<Store>() {
            if fleet {
                return Err(PyTypeError::new_err(
                    "with redis_url or redis_cluster, UserStorage takes a path: it opens the local store itself",
                ));
            }
            return Ok(UserStorage {
                store: store.clone().unbind(),
                tier: None,
            });
        }
        let path: PathBuf = path_or_store.extract().map_err(|_| {
            PyTypeError::new_err("UserStorage takes a path (str or os.PathLike) or a ussdb.Store")
        })?;
        if fleet {
            let (tier, store) = open_tier(
                py,
                path,
                durability,
                segment_size,
                redis_url,
                redis_cluster,
                fresh_for,
                redis_key_prefix,
                per_worker,
                Shipping {
                    batch: ship_batch,
                    retry_max,
                },
            )?;
            return Ok(UserStorage {
                store: Py::new(py, store)?,
                tier: Some(tier),
            });
        }
        if fresh_for.is_some()
            || redis_key_prefix.is_some()
            || per_worker
            || ship_batch.is_some()
            || retry_max.is_some()
        {
            return Err(PyValueError::new_err(
                "fresh_for, redis_key_prefix, per_worker, ship_batch and retry_max apply with redis_url or \
                 redis_cluster",
            ));
        }
        let store = Store::new(py, path, durability, segment_size, None, true, true)?;
        Ok(UserStorage {
            store: Py::new(py, store)?,
            tier: None,
        })
    }

    fn get<'py>(
        &self,
        user_id: &Bound<'py, PyString>,
        campaign_key: &Bound<'py, PyString>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        if let Some(tier) = &self.tier {
            let (user, campaign) = (user_id.to_str()?, campaign_key.to_str()?);
            let got = tier.call(user_id.py(), |t| t.get(user, campaign))?;
            return got
                .map(|m| {
                    record_dict(
                        user_id.as_any(),
                        campaign_key.as_any(),
                        m.variation_name,
                        m.goal_identifier,
                        Shape::Vwo,
                    )
                })
                .transpose();
        }
        self.store
            .get()
            .get_shaped(user_id, campaign_key, Shape::Vwo)
    }

    fn set(&self, data: &Bound<'_, PyDict>) -> PyResult<()> {
        if let Some(tier) = &self.tier {
            let record = dict_to_record(data)?;
            return tier.call(data.py(), |t| t.set(&record));
        }
        self.store.get().set_dict(data)
    }

    /// With a Redis: waits until every change made so far is in Redis, at most `timeout` seconds;
    /// raises ussdb.Error if Redis did not take them in time (they stay queued, durably).
    #[pyo3(signature = (timeout = 10.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = std::time::Duration::try_from_secs_f64(timeout).map_err(|_| {
            PyValueError::new_err(format!("timeout must be seconds >= 0, not {timeout}"))
        })?;
        match &self.tier {
            Some(tier) => tier.call(py, |t| t.flush(timeout)),
            None => Ok(()),
        }
    }

    /// With a Redis, the tier's counters as a dict (outbox_depth, replay_lag_seconds, shipped,
    /// redis_errors, local_hits, remote_hits, misses, degraded, redis_available, hit_ratio);
    /// None without one.
    fn tier_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        match &self.tier {
            Some(tier) => {
                let stats = tier.call(py, |t| Ok(t.stats()))?;
                tier_stats_dict(py, &stats).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The underlying `Store` (for sync, stats, forget_user...).
    #[getter]
    fn store(&self, py: Python<'_>) -> Py<Store> {
        self.store.clone_ref(py)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(tier) = &self.tier {
            tier.close(py);
        }
        self.store.get().close(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<ussdb.UserStorage over {}>", self.store.get().__repr__())
    }
}

/// The storage connector for the VWO FME Python SDK:
/// `vwo.init({"sdk_key": ..., "account_id": ..., "storage": ussdb.FmeStorage(path)})`.
///
/// `get(feature_key, user_id)` returns None or the dict the SDK passed to `set` for that feature and
/// user (ids as ints, `None`s kept, members the SDK adds in later versions kept); `set(data)` stores
/// the dict the SDK passes. Mutually exclusive group decisions go through it too, under the feature
/// key `_vwo_meta_meg_<groupId>`. Built on a path, it opens its own `Store`; built on a `Store`, it
/// shares it (one store can serve `UserStorage` and `FmeStorage` at once: their records never collide).
#[pyclass(frozen, module = "ussdb", name = "FmeStorage")]
struct FmeStorage {
    store: Py<Store>,
}

#[pymethods]
impl FmeStorage {
    #[new]
    #[pyo3(signature = (path_or_store, durability = "periodic", segment_size = None))]
    fn new(
        py: Python<'_>,
        path_or_store: &Bound<'_, PyAny>,
        durability: &str,
        segment_size: Option<u64>,
    ) -> PyResult<Self> {
        if let Ok(store) = path_or_store.cast::<Store>() {
            return Ok(FmeStorage {
                store: store.clone().unbind(),
            });
        }
        let path: PathBuf = path_or_store.extract().map_err(|_| {
            PyTypeError::new_err("FmeStorage takes a path (str or os.PathLike) or a ussdb.Store")
        })?;
        let store = Store::new(py, path, durability, segment_size, None, true, true)?;
        Ok(FmeStorage {
            store: Py::new(py, store)?,
        })
    }

    fn get<'py>(
        &self,
        py: Python<'py>,
        feature_key: &str,
        user_id: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.store.get().get_feature(py, feature_key, user_id)
    }

    fn set(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.store.get().set_feature(data)
    }

    /// The underlying `Store` (for sync, stats, forget_user, features_of...).
    #[getter]
    fn store(&self, py: Python<'_>) -> Py<Store> {
        self.store.clone_ref(py)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.store.get().close(py)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<ussdb.FmeStorage over {}>", self.store.get().__repr__())
    }
}

/// Embedded, crash-safe user storage for A/B-testing SDKs.
#[pymodule(name = "ussdb")]
mod ussdb_module {
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::{Error, FmeStorage, Store, UserStorage};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        let py = m.py();
        let hook = wrap_pyfunction!(super::_after_fork_in_child, py)?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("after_in_child", hook)?;
        py.import("os")?
            .getattr("register_at_fork")?
            .call((), Some(&kwargs))?;
        Ok(())
    }
}
