//! Node.js binding of ussdb (the native half of the `ussdb` npm package).
//!
//! `index.js` is the public API: it checks argument types and options, builds the record objects and the
//! SDK-facing classes (`UserStorage`, `FmeStorage`), and carries the TypeScript declarations. This addon works on
//! an opaque store handle (a type-tagged N-API external) and primitives, and refuses anything else with a
//! `TypeError`, so a wrong argument that slips past `index.js` is an exception, never a crash.
//!
//! Every operation has a synchronous form (runs on the calling thread, like `fs.readFileSync`) and an `...Async`
//! form that runs on the libuv thread pool and returns a Promise, so an fsync never blocks the event loop; but
//! `setAsync`, which appends at once and settles when its write is durable without holding a pool thread
//! (`ussdb::Durable::then`).
//! Errors are JS `Error`s whose `code` names the engine's error variant (`USSDB_IO`, `USSDB_LOCKED`, ...).
//!
//! `get` and `set` are plain N-API callbacks instead of `#[napi]` functions: they are the calls an SDK makes per
//! request, and the generated argument handling cost about a third of a `get`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::ffi::{CStr, c_void};
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::{Arc, PoisonError, RwLock};

use napi::bindgen_prelude::*;
use napi::{JsError, Task, sys};
use napi_derive::napi;

// ---- the store handle ----

/// The open engine, or `None` once closed. Calls hold the read side for as long as they use the engine, so
/// `close` waits for running calls (including those on the thread pool) instead of pulling the store from under
/// them, and a call that starts after `close` fails with `USSDB_CLOSED`.
type Shared = Arc<RwLock<Option<ussdb::Store>>>;

/// What a JS store handle points to. Dropped when the handle is garbage-collected; the engine itself closes when
/// the last of the handle and any running async call lets go of it.
struct Handle {
    shared: Shared,
    path: Arc<str>,
}

/// Marks externals made by this addon, so that a foreign external passed as a handle is refused, not misread.
const HANDLE_TAG: sys::napi_type_tag = sys::napi_type_tag {
    lower: 0x7573_7364_622d_6e6f,
    upper: 0x6465_2d68_616e_646c,
};

unsafe extern "C" fn drop_handle(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the `Box<Handle>` leaked in `open`, and N-API calls this finalizer once.
    drop(unsafe { Box::from_raw(data.cast::<Handle>()) });
}

/// The handle behind `value`, or a `TypeError` if it is not one made by `open`.
///
/// # Safety
/// `value` must be a live value of `env`'s current scope; the reference lives as long as that scope.
unsafe fn handle_of<'a>(env: sys::napi_env, value: sys::napi_value) -> Raised<&'a Handle> {
    // Only externals can be handles; asking for the tag of a primitive would throw its own exception.
    let mut kind = 0;
    let mut tagged = false;
    let status = unsafe { sys::napi_typeof(env, value, &mut kind) };
    if status != sys::Status::napi_ok
        || kind != sys::ValueType::napi_external
        || unsafe { sys::napi_check_object_type_tag(env, value, &HANDLE_TAG, &mut tagged) }
            != sys::Status::napi_ok
        || !tagged
    {
        return Err(Thrown::type_error(
            "the first argument is not a ussdb store handle",
        ));
    }
    let mut data = ptr::null_mut();
    if unsafe { sys::napi_get_value_external(env, value, &mut data) } != sys::Status::napi_ok
        || data.is_null()
    {
        return Err(Thrown::type_error(
            "the first argument is not a ussdb store handle",
        ));
    }
    // SAFETY: tagged externals hold a `Handle` that lives until the external is collected, which cannot happen
    // while `value` is on the stack of the current call.
    Ok(unsafe { &*data.cast::<Handle>() })
}

// ---- failures ----

/// Why an engine call failed, before it becomes a JS error (which can only be built on the JS thread).
pub enum Failure {
    Engine(ussdb::Error),
    Closed,
}

/// A call's result before it reaches the JS thread.
type Outcome<T> = std::result::Result<T, Failure>;

impl From<ussdb::Error> for Failure {
    fn from(e: ussdb::Error) -> Failure {
        Failure::Engine(e)
    }
}

/// The `code` property of the JS error for each engine error variant.
fn code_of(e: &ussdb::Error) -> &'static str {
    use ussdb::Error as E;
    match e {
        E::Io { .. } => "USSDB_IO",
        E::Corrupted { .. } => "USSDB_CORRUPTED",
        E::BadMagic { .. } => "USSDB_BAD_MAGIC",
        E::UnsupportedVersion { .. } => "USSDB_UNSUPPORTED_VERSION",
        E::InvalidKey { .. } => "USSDB_INVALID_KEY",
        E::ValueTooLarge { .. } => "USSDB_VALUE_TOO_LARGE",
        E::InvalidOption { .. } => "USSDB_INVALID_OPTION",
        E::Locked { .. } | E::LockMode { .. } => "USSDB_LOCKED",
        E::NotADirectory { .. } => "USSDB_NOT_A_DIRECTORY",
        E::ReadOnly { .. } => "USSDB_READ_ONLY",
        E::Forked { .. } => "USSDB_FORKED",
        E::Poisoned { .. } => "USSDB_POISONED",
        E::Import { .. } => "USSDB_IMPORT",
        E::Backend { .. } => "USSDB_BACKEND",
        E::Export { .. } => "USSDB_EXPORT",
        E::Json { .. } => "USSDB_JSON",
        // The enum is non-exhaustive: a variant added later still gets a code callers can match on.
        _ => "USSDB_ERROR",
    }
}

impl Failure {
    fn code_and_message(&self, path: &str) -> (&'static str, String) {
        match self {
            Failure::Engine(e) => (code_of(e), e.to_string()),
            Failure::Closed => ("USSDB_CLOSED", format!("the store at {path} is closed")),
        }
    }

    /// The napi error that throws (or rejects with) a JS `Error` carrying `code`.
    fn into_napi(self, env: &Env, path: &str) -> Error {
        let (code, message) = self.code_and_message(path);
        let object = JsError::from(Error::new(code, message)).into_unknown(*env);
        Error::from(object)
    }
}

/// A result whose error is an exception to throw.
type Raised<T> = std::result::Result<T, Thrown>;

/// An exception a raw callback is about to throw.
enum Thrown {
    Type(String),
    Coded(&'static str, String),
    /// A failed N-API call: an exception may already be pending, else a generic one is thrown.
    Napi(sys::napi_status),
}

impl Thrown {
    fn type_error(message: impl Into<String>) -> Thrown {
        Thrown::Type(message.into())
    }

    fn from_failure(f: Failure, path: &str) -> Thrown {
        let (code, message) = f.code_and_message(path);
        Thrown::Coded(code, message)
    }

    unsafe fn throw(self, env: sys::napi_env) {
        let text = |s: String| std::ffi::CString::new(s.replace('\0', " ")).unwrap_or_default();
        match self {
            Thrown::Type(message) => {
                let message = text(message);
                unsafe {
                    sys::napi_throw_type_error(
                        env,
                        c"ERR_INVALID_ARG_TYPE".as_ptr(),
                        message.as_ptr(),
                    )
                };
            }
            Thrown::Coded(code, message) => {
                let (code, message) = (text(code.to_owned()), text(message));
                unsafe { sys::napi_throw_error(env, code.as_ptr(), message.as_ptr()) };
            }
            Thrown::Napi(status) => {
                let mut pending = false;
                unsafe { sys::napi_is_exception_pending(env, &mut pending) };
                if !pending {
                    let message = text(format!("ussdb: an N-API call failed with status {status}"));
                    unsafe { sys::napi_throw_error(env, ptr::null(), message.as_ptr()) };
                }
            }
        }
    }
}

fn ok(status: sys::napi_status) -> Raised<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Thrown::Napi(status))
    }
}

impl Thrown {
    /// The napi error that throws (or rejects with) this exception, for the `#[napi]` functions.
    fn into_napi(self, env: &Env) -> Error {
        let object = match self {
            Thrown::Type(m) => {
                napi::JsTypeError::from(Error::new("ERR_INVALID_ARG_TYPE", m)).into_unknown(*env)
            }
            Thrown::Coded(code, m) => JsError::from(Error::new(code, m)).into_unknown(*env),
            Thrown::Napi(status) => {
                return Error::new(Status::from(status), "an N-API call failed");
            }
        };
        Error::from(object)
    }
}

// ---- engine calls ----

/// Runs `f` on the open engine, holding the read side of the lock while it runs.
fn with_store<T>(shared: &Shared, f: impl FnOnce(&ussdb::Store) -> ussdb::Result<T>) -> Outcome<T> {
    let guard = shared.read().unwrap_or_else(PoisonError::into_inner);
    match guard.as_ref() {
        Some(store) => Ok(f(store)?),
        None => Err(Failure::Closed),
    }
}

/// Takes the engine out and syncs it; dropping it then releases the directory lock. Closing twice is harmless.
fn close_store(shared: &Shared) -> Outcome<()> {
    let taken = shared
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    // Sync even under "never": a caller who closes expects the data to be on disk.
    match taken {
        Some(store) => Ok(store.sync()?),
        None => Ok(()),
    }
}

// ---- JS values, raw ----

unsafe fn js_string(env: sys::napi_env, s: &str) -> Raised<sys::napi_value> {
    let mut value = ptr::null_mut();
    ok(unsafe {
        sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut value)
    })?;
    Ok(value)
}

unsafe fn js_undefined(env: sys::napi_env) -> Raised<sys::napi_value> {
    let mut value = ptr::null_mut();
    ok(unsafe { sys::napi_get_undefined(env, &mut value) })?;
    Ok(value)
}

unsafe fn js_array(env: sys::napi_env, items: &[sys::napi_value]) -> Raised<sys::napi_value> {
    let mut array = ptr::null_mut();
    ok(unsafe { sys::napi_create_array_with_length(env, items.len(), &mut array) })?;
    for (i, item) in items.iter().enumerate() {
        ok(unsafe { sys::napi_set_element(env, array, i as u32, *item) })?;
    }
    Ok(array)
}

/// A found mapping as `get` returns it to index.js, which builds the record object (a JS object literal is far
/// cheaper than setting named properties through N-API): the variation name alone, or `[variation, goals]`.
unsafe fn found_value(
    env: sys::napi_env,
    variation_name: &str,
    goal_identifier: Option<&str>,
) -> Raised<sys::napi_value> {
    let variation = unsafe { js_string(env, variation_name)? };
    match goal_identifier {
        None => Ok(variation),
        Some(goals) => unsafe { js_array(env, &[variation, js_string(env, goals)?]) },
    }
}

/// `campaignsOf` for index.js: `[campaignKey, variationName, goalIdentifier | undefined, ...]`.
unsafe fn maps_value(
    env: sys::napi_env,
    maps: &[ussdb::CampaignUserMap],
) -> Raised<sys::napi_value> {
    let undefined = unsafe { js_undefined(env)? };
    let mut items = Vec::with_capacity(maps.len() * 3);
    for m in maps {
        items.push(unsafe { js_string(env, &m.campaign_key)? });
        items.push(unsafe { js_string(env, &m.variation_name)? });
        items.push(match &m.goal_identifier {
            Some(g) => unsafe { js_string(env, g)? },
            None => undefined,
        });
    }
    unsafe { js_array(env, &items) }
}

/// Room for any valid id (`ussdb::MAX_ID_LEN` bytes) read in one N-API call; longer strings are read again at
/// full length, so that the engine, not a truncation, decides they are too long.
const STACK_STR: usize = ussdb::MAX_ID_LEN + 8;

/// Scratch space for reading one string argument without a heap allocation (left uninitialised: N-API writes
/// the bytes that are read back).
type Scratch = [MaybeUninit<u8>; STACK_STR];

const fn scratch() -> Scratch {
    [MaybeUninit::uninit(); STACK_STR]
}

/// A JS string argument as UTF-8 (lone surrogates become U+FFFD, as everywhere in N-API), borrowed from `buf`
/// when it fits.
unsafe fn read_text<'b>(
    env: sys::napi_env,
    value: sys::napi_value,
    name: &str,
    buf: &'b mut Scratch,
) -> Raised<Cow<'b, str>> {
    let mut len = 0usize;
    let status = unsafe {
        sys::napi_get_value_string_utf8(env, value, buf.as_mut_ptr().cast(), STACK_STR, &mut len)
    };
    if status == sys::Status::napi_string_expected {
        let kind = unsafe { type_name(env, value) };
        return Err(Thrown::type_error(format!(
            "{name} must be a string, not {kind}"
        )));
    }
    ok(status)?;
    let invalid = || Thrown::type_error(format!("{name} is not valid text"));
    // The copy stops before a UTF-8 sequence that would not fit, so a string whose copy came within 4 bytes of the
    // end may have been cut: read it again at its full length.
    if len + 4 < STACK_STR {
        // SAFETY: N-API initialised the first `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| invalid());
    }
    let mut full = 0usize;
    ok(unsafe { sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut full) })?;
    let mut bytes = vec![0u8; full + 1];
    ok(unsafe {
        sys::napi_get_value_string_utf8(env, value, bytes.as_mut_ptr().cast(), full + 1, &mut len)
    })?;
    bytes.truncate(len);
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| invalid())
}

/// What `typeof` says of `value` (with `null` told apart), for error messages.
unsafe fn type_name(env: sys::napi_env, value: sys::napi_value) -> &'static str {
    let mut kind = 0;
    if unsafe { sys::napi_typeof(env, value, &mut kind) } != sys::Status::napi_ok {
        return "an unknown value";
    }
    match kind {
        sys::ValueType::napi_undefined => "undefined",
        sys::ValueType::napi_null => "null",
        sys::ValueType::napi_boolean => "a boolean",
        sys::ValueType::napi_number => "a number",
        sys::ValueType::napi_string => "a string",
        sys::ValueType::napi_symbol => "a symbol",
        sys::ValueType::napi_object => "an object",
        sys::ValueType::napi_function => "a function",
        sys::ValueType::napi_bigint => "a bigint",
        _ => "an unknown value",
    }
}

/// `value` is `undefined` or `null`.
unsafe fn is_nullish(env: sys::napi_env, value: sys::napi_value) -> Raised<bool> {
    let mut kind = 0;
    ok(unsafe { sys::napi_typeof(env, value, &mut kind) })?;
    Ok(kind == sys::ValueType::napi_undefined || kind == sys::ValueType::napi_null)
}

/// The arguments of a raw callback; missing ones read as `undefined`.
unsafe fn args<const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Raised<[sys::napi_value; N]> {
    let mut argv = [ptr::null_mut(); N];
    let mut argc = N;
    ok(unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    })?;
    if argc < N {
        let undefined = unsafe { js_undefined(env)? };
        for slot in &mut argv[argc..] {
            *slot = undefined;
        }
    }
    Ok(argv)
}

/// Runs the body of a raw callback: throws its error, and turns a panic into an exception instead of unwinding
/// into N-API (which would abort the process).
unsafe fn guard(
    env: sys::napi_env,
    body: impl FnOnce() -> Raised<sys::napi_value>,
) -> sys::napi_value {
    let thrown = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(thrown)) => thrown,
        Err(_) => Thrown::Coded(
            "USSDB_INTERNAL",
            "ussdb: internal error (a panic); please report it".into(),
        ),
    };
    unsafe { thrown.throw(env) };
    ptr::null_mut()
}

/// `get(handle, userId, campaignKey)`: `undefined`, the variation name, or `[variationName, goalIdentifier]`.
unsafe extern "C" fn raw_get(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    unsafe {
        guard(env, || {
            let [h, u, c] = args::<3>(env, info)?;
            let handle = handle_of(env, h)?;
            let (mut ub, mut cb) = (scratch(), scratch());
            let u = read_text(env, u, "userId", &mut ub)?;
            let c = read_text(env, c, "campaignKey", &mut cb)?;
            match with_store(&handle.shared, |s| s.get(&u, &c)) {
                Ok(Some(map)) => {
                    found_value(env, &map.variation_name, map.goal_identifier.as_deref())
                }
                Ok(None) => js_undefined(env),
                Err(f) => Err(Thrown::from_failure(f, &handle.path)),
            }
        })
    }
}

unsafe fn read_map(
    env: sys::napi_env,
    argv: &[sys::napi_value; 5],
) -> Raised<ussdb::CampaignUserMap> {
    let [_, u, c, v, g] = *argv;
    let mut buf = scratch();
    let mut text =
        |value, name| unsafe { read_text(env, value, name, &mut buf) }.map(Cow::into_owned);
    Ok(ussdb::CampaignUserMap {
        user_id: text(u, "userId")?,
        campaign_key: text(c, "campaignKey")?,
        variation_name: text(v, "variationName")?,
        goal_identifier: match unsafe { is_nullish(env, g)? } {
            true => None,
            false => Some(text(g, "goalIdentifier")?),
        },
    })
}

/// `set(handle, userId, campaignKey, variationName, goalIdentifier?)`.
unsafe extern "C" fn raw_set(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    unsafe {
        guard(env, || {
            let argv = args::<5>(env, info)?;
            let handle = handle_of(env, argv[0])?;
            let map = read_map(env, &argv)?;
            match with_store(&handle.shared, |s| s.set(&map)) {
                Ok(()) => js_undefined(env),
                Err(f) => Err(Thrown::from_failure(f, &handle.path)),
            }
        })
    }
}

/// Registers the raw callbacks beside the `#[napi]` exports.
#[napi(module_exports)]
pub fn init(exports: Object, env: Env) -> Result<()> {
    type Callback = unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value;
    let raw: [(&CStr, Callback); 2] = [(c"get", raw_get), (c"set", raw_set)];
    for (name, callback) in raw {
        let mut function = ptr::null_mut();
        ok(unsafe {
            sys::napi_create_function(
                env.raw(),
                name.as_ptr(),
                name.to_bytes().len() as isize,
                Some(callback),
                ptr::null_mut(),
                &mut function,
            )
        })
        .map_err(|t| t.into_napi(&env))?;
        ok(unsafe {
            sys::napi_set_named_property(env.raw(), exports.raw(), name.as_ptr(), function)
        })
        .map_err(|t| t.into_napi(&env))?;
    }
    Ok(())
}

// ---- the rest of the API, through napi-rs ----

/// A raw value handed back to napi-rs as is.
pub struct Raw(sys::napi_value);

impl TypeName for Raw {
    fn type_name() -> &'static str {
        "unknown"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ToNapiValue for Raw {
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        Ok(val.0)
    }
}

/// The handle of `value`, for the `#[napi]` functions below.
fn handle<'a>(env: &Env, value: &Unknown<'a>) -> Result<&'a Handle> {
    // SAFETY: `value` is an argument of the current call.
    unsafe { handle_of(env.raw(), value.raw()) }.map_err(|t| t.into_napi(env))
}

fn run<T>(
    env: &Env,
    handle: &Handle,
    f: impl FnOnce(&ussdb::Store) -> ussdb::Result<T>,
) -> Result<T> {
    with_store(&handle.shared, f).map_err(|e| e.into_napi(env, &handle.path))
}

/// Opens (or creates) the store in directory `path` and returns its handle. `durability` is "immediate",
/// "periodic", "periodic:<N>ms" or "never"; null sizes and thresholds keep the engine's defaults; `read_only`
/// opens without writing anything, beside other read-only openers; `shared` opens in the multi-process mode
/// (node:cluster and PM2 workers share the directory; index.js turns it on unless `read_only`).
#[napi(ts_return_type = "object")]
#[allow(clippy::too_many_arguments)]
pub fn open(
    env: Env,
    path: String,
    durability: String,
    segment_size: Option<f64>,
    compaction_threshold: Option<f64>,
    auto_compaction: bool,
    read_only: bool,
    shared: Option<bool>,
) -> Result<Raw> {
    let fail = |e: ussdb::Error| Failure::Engine(e).into_napi(&env, &path);
    let durability: ussdb::Durability = durability.parse().map_err(fail)?;
    let mut options = ussdb::Options::default()
        .durability(durability)
        .auto_compaction(auto_compaction)
        .read_only(read_only)
        .shared(shared.unwrap_or(!read_only));
    if let Some(bytes) = segment_size {
        // index.js passes only whole numbers; a value outside the engine's range is refused by its check.
        options = options.segment_size(bytes as u64);
    }
    if let Some(ratio) = compaction_threshold {
        options = options.compaction_threshold(ratio);
    }
    let store = ussdb::Store::open_with(&path, options).map_err(fail)?;
    let handle = Box::into_raw(Box::new(Handle {
        shared: Arc::new(RwLock::new(Some(store))),
        path: Arc::from(path.as_str()),
    }));
    let mut external = ptr::null_mut();
    let made = unsafe {
        sys::napi_create_external(
            env.raw(),
            handle.cast(),
            Some(drop_handle),
            ptr::null_mut(),
            &mut external,
        )
    };
    if made != sys::Status::napi_ok {
        // SAFETY: the external was not made, so nothing else owns `handle`.
        drop(unsafe { Box::from_raw(handle) });
        return Err(Error::new(
            Status::from(made),
            "could not create the store handle",
        ));
    }
    ok(unsafe { sys::napi_type_tag_object(env.raw(), external, &HANDLE_TAG) })
        .map_err(|t| t.into_napi(&env))?;
    Ok(Raw(external))
}

#[napi]
pub fn is_closed(env: Env, handle: Unknown) -> Result<bool> {
    let h = self::handle(&env, &handle)?;
    Ok(h.shared
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .is_none())
}

#[napi]
pub fn delete(env: Env, handle: Unknown, user_id: String, campaign_key: String) -> Result<bool> {
    run(&env, self::handle(&env, &handle)?, |s| {
        s.delete(&user_id, &campaign_key)
    })
}

#[napi]
pub fn forget_user(env: Env, handle: Unknown, user_id: String) -> Result<f64> {
    run(&env, self::handle(&env, &handle)?, |s| {
        s.forget_user(&user_id)
    })
    .map(|n| n as f64)
}

#[napi(ts_return_type = "Array<string | undefined>")]
pub fn campaigns_of(env: Env, handle: Unknown, user_id: String) -> Result<Raw> {
    let maps = run(&env, self::handle(&env, &handle)?, |s| {
        s.campaigns_of(&user_id)
    })?;
    unsafe { maps_value(env.raw(), &maps) }
        .map(Raw)
        .map_err(|t| t.into_napi(&env))
}

#[napi]
pub fn sync(env: Env, handle: Unknown) -> Result<()> {
    run(&env, self::handle(&env, &handle)?, |s| s.sync())
}

#[napi]
pub fn compact(env: Env, handle: Unknown) -> Result<()> {
    run(&env, self::handle(&env, &handle)?, |s| s.compact())
}

/// What `backup` copied.
#[napi(object)]
pub struct BackupReport {
    pub segments: f64,
    pub linked: f64,
    pub copied: f64,
    pub bytes: f64,
}

impl From<ussdb::BackupReport> for BackupReport {
    fn from(r: ussdb::BackupReport) -> BackupReport {
        BackupReport {
            segments: r.segments as f64,
            linked: r.linked as f64,
            copied: r.copied as f64,
            bytes: r.bytes as f64,
        }
    }
}

#[napi]
pub fn backup(env: Env, handle: Unknown, dest: String) -> Result<BackupReport> {
    run(&env, self::handle(&env, &handle)?, |s| s.backup(&dest)).map(BackupReport::from)
}

// ---- FME records (vwo-fme-node-sdk), as the SDKs' JSON: index.js parses and stringifies ----

#[napi]
pub fn get_feature(
    env: Env,
    handle: Unknown,
    feature_key: String,
    user_id: String,
) -> Result<Option<String>> {
    run(&env, self::handle(&env, &handle)?, |s| {
        s.get_feature(&feature_key, &user_id)
    })
    .map(|r| r.map(|r| r.to_json()))
}

#[napi]
pub fn set_feature(env: Env, handle: Unknown, json: String) -> Result<()> {
    run(&env, self::handle(&env, &handle)?, |s| {
        s.set_feature(&ussdb::FeatureRecord::from_json(&json)?)
    })
}

#[napi]
pub fn delete_feature(
    env: Env,
    handle: Unknown,
    feature_key: String,
    user_id: String,
) -> Result<bool> {
    run(&env, self::handle(&env, &handle)?, |s| {
        s.delete_feature(&feature_key, &user_id)
    })
}

#[napi]
pub fn features_of(env: Env, handle: Unknown, user_id: String) -> Result<Vec<String>> {
    run(&env, self::handle(&env, &handle)?, |s| {
        s.features_of(&user_id)
    })
    .map(|rs| rs.iter().map(ussdb::FeatureRecord::to_json).collect())
}

#[napi]
pub fn close(env: Env, handle: Unknown) -> Result<()> {
    let h = self::handle(&env, &handle)?;
    close_store(&h.shared).map_err(|e| e.into_napi(&env, &h.path))
}

/// Engine counters; byte and event counts are plain numbers (exact below 2^53).
#[napi(object)]
pub struct Stats {
    pub mappings: f64,
    pub segments: f64,
    pub disk_bytes: f64,
    pub live_bytes: f64,
    pub dead_bytes: f64,
    pub space_amplification: f64,
    pub index_heap_bytes: f64,
    pub sets: f64,
    pub deletes: f64,
    pub fsyncs: f64,
    pub compactions: f64,
    /// Seconds the last compaction pass took, or null if none has run since open.
    pub last_compaction_seconds: Option<f64>,
    pub reclaimed_bytes: f64,
    pub hint_files: f64,
    /// The open loaded the index the last clean close saved.
    pub index_loaded: bool,
}

impl From<ussdb::Stats> for Stats {
    fn from(s: ussdb::Stats) -> Stats {
        Stats {
            mappings: s.mappings as f64,
            segments: s.segments as f64,
            disk_bytes: s.disk_bytes as f64,
            live_bytes: s.live_bytes as f64,
            dead_bytes: s.dead_bytes as f64,
            space_amplification: s.space_amplification,
            index_heap_bytes: s.index_heap_bytes as f64,
            sets: s.sets as f64,
            deletes: s.deletes as f64,
            fsyncs: s.fsyncs as f64,
            compactions: s.compactions as f64,
            last_compaction_seconds: s.last_compaction.map(|d| d.as_secs_f64()),
            reclaimed_bytes: s.reclaimed_bytes as f64,
            hint_files: s.hint_files as f64,
            index_loaded: s.index_loaded,
        }
    }
}

#[napi]
pub fn stats(env: Env, handle: Unknown) -> Result<Stats> {
    run(&env, self::handle(&env, &handle)?, |s| Ok(s.stats())).map(Stats::from)
}

// ---- async calls ----

/// What an async call does on the thread pool.
pub enum Op {
    Get(String, String),
    Delete(String, String),
    ForgetUser(String),
    CampaignsOf(String),
    Sync,
    Compact,
    Backup(String),
    GetFeature(String, String),
    /// The record's JSON, parsed here on the pool thread.
    SetFeature(String),
    DeleteFeature(String, String),
    FeaturesOf(String),
    Close,
}

/// What an async call found, turned into a JS value on the JS thread.
pub enum Answer {
    Map(Option<ussdb::CampaignUserMap>),
    Maps(Vec<ussdb::CampaignUserMap>),
    Bool(bool),
    Count(usize),
    Backup(ussdb::BackupReport),
    /// FME records as the SDKs' JSON.
    Json(Option<String>),
    Jsons(Vec<String>),
    Nothing,
}

/// One async call: runs on a libuv pool thread, resolves or rejects on the JS thread.
pub struct Call {
    shared: Shared,
    path: Arc<str>,
    op: Option<Op>,
}

impl Task for Call {
    // The engine's failure travels as a value: a JS error (with its `code`) can only be built in `resolve`.
    type Output = Outcome<Answer>;
    type JsValue = Raw;

    fn compute(&mut self) -> Result<Self::Output> {
        let Some(op) = self.op.take() else {
            return Err(Error::from_reason("ussdb: an async call ran twice"));
        };
        let shared = &self.shared;
        Ok(match op {
            Op::Get(u, c) => with_store(shared, |s| s.get(&u, &c)).map(Answer::Map),
            Op::Delete(u, c) => with_store(shared, |s| s.delete(&u, &c)).map(Answer::Bool),
            Op::ForgetUser(u) => with_store(shared, |s| s.forget_user(&u)).map(Answer::Count),
            Op::CampaignsOf(u) => with_store(shared, |s| s.campaigns_of(&u)).map(Answer::Maps),
            Op::Sync => with_store(shared, |s| s.sync()).map(|()| Answer::Nothing),
            Op::Compact => with_store(shared, |s| s.compact()).map(|()| Answer::Nothing),
            Op::Backup(dest) => with_store(shared, |s| s.backup(&dest)).map(Answer::Backup),
            Op::GetFeature(f, u) => with_store(shared, |s| s.get_feature(&f, &u))
                .map(|r| Answer::Json(r.map(|r| r.to_json()))),
            Op::SetFeature(json) => with_store(shared, |s| {
                s.set_feature(&ussdb::FeatureRecord::from_json(&json)?)
            })
            .map(|()| Answer::Nothing),
            Op::DeleteFeature(f, u) => {
                with_store(shared, |s| s.delete_feature(&f, &u)).map(Answer::Bool)
            }
            Op::FeaturesOf(u) => with_store(shared, |s| s.features_of(&u))
                .map(|rs| Answer::Jsons(rs.iter().map(ussdb::FeatureRecord::to_json).collect())),
            Op::Close => close_store(shared).map(|()| Answer::Nothing),
        })
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<Self::JsValue> {
        let answer = output.map_err(|f| f.into_napi(&env, &self.path))?;
        let raw = env.raw();
        let value = unsafe {
            match answer {
                Answer::Map(Some(map)) => {
                    found_value(raw, &map.variation_name, map.goal_identifier.as_deref())
                }
                Answer::Map(None) | Answer::Nothing => js_undefined(raw),
                Answer::Maps(maps) => maps_value(raw, &maps),
                Answer::Bool(b) => return bool::to_napi_value(raw, b).map(Raw),
                Answer::Count(n) => return f64::to_napi_value(raw, n as f64).map(Raw),
                Answer::Backup(r) => return BackupReport::to_napi_value(raw, r.into()).map(Raw),
                Answer::Json(None) => js_undefined(raw),
                Answer::Json(Some(json)) => js_string(raw, &json),
                Answer::Jsons(jsons) => return Vec::<String>::to_napi_value(raw, jsons).map(Raw),
            }
        };
        value.map(Raw).map_err(|t| t.into_napi(&env))
    }
}

fn call(env: &Env, handle: &Unknown, op: Op) -> Result<AsyncTask<Call>> {
    let h = self::handle(env, handle)?;
    Ok(AsyncTask::new(Call {
        shared: Arc::clone(&h.shared),
        path: Arc::clone(&h.path),
        op: Some(op),
    }))
}

#[napi(ts_return_type = "Promise<string | [string, string] | undefined>")]
pub fn get_async(
    env: Env,
    handle: Unknown,
    user_id: String,
    campaign_key: String,
) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::Get(user_id, campaign_key))
}

/// What settles a `setAsync` Promise, on the JS thread.
type Settle = Box<dyn FnOnce(Env) -> Result<()> + Send>;

/// Resolves `deferred`, or rejects it with the JS `Error` (and its `code`) of the failure. Any thread: the error
/// object can only be made on the JS thread, so the resolver makes it there and rejects with it.
fn settle(deferred: napi::JsDeferred<(), Settle>, result: Outcome<()>, path: Arc<str>) {
    match result {
        Ok(()) => deferred.resolve(Box::new(|_| Ok(()))),
        Err(failure) => deferred.resolve(Box::new(move |env| Err(failure.into_napi(&env, &path)))),
    }
}

/// Appends at once on the calling thread and settles when the write is durable (`ussdb::Durable::then`, called
/// back from one thread of the library's): no pool thread waits out an fsync, so writes in flight share the
/// store's group commits whatever their number.
#[napi(ts_return_type = "Promise<void>")]
pub fn set_async(
    env: Env,
    handle: Unknown,
    user_id: String,
    campaign_key: String,
    variation_name: String,
    goal_identifier: Option<String>,
) -> Result<Raw> {
    let h = self::handle(&env, &handle)?;
    let map = ussdb::CampaignUserMap {
        user_id,
        campaign_key,
        variation_name,
        goal_identifier,
    };
    let (deferred, promise) = env.create_deferred::<(), Settle>()?;
    let path = Arc::clone(&h.path);
    match with_store(&h.shared, |s| Ok(s.set_async(&map))) {
        Ok(written) => {
            written.then(move |result| settle(deferred, result.map_err(Failure::Engine), path))
        }
        Err(failure) => settle(deferred, Err(failure), path),
    }
    Ok(Raw(promise.raw()))
}

#[napi(ts_return_type = "Promise<boolean>")]
pub fn delete_async(
    env: Env,
    handle: Unknown,
    user_id: String,
    campaign_key: String,
) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::Delete(user_id, campaign_key))
}

#[napi(ts_return_type = "Promise<number>")]
pub fn forget_user_async(env: Env, handle: Unknown, user_id: String) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::ForgetUser(user_id))
}

#[napi(ts_return_type = "Promise<Array<string | undefined>>")]
pub fn campaigns_of_async(env: Env, handle: Unknown, user_id: String) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::CampaignsOf(user_id))
}

#[napi(ts_return_type = "Promise<void>")]
pub fn sync_async(env: Env, handle: Unknown) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::Sync)
}

#[napi(ts_return_type = "Promise<void>")]
pub fn compact_async(env: Env, handle: Unknown) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::Compact)
}

#[napi(ts_return_type = "Promise<BackupReport>")]
pub fn backup_async(env: Env, handle: Unknown, dest: String) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::Backup(dest))
}

#[napi(ts_return_type = "Promise<string | undefined>")]
pub fn get_feature_async(
    env: Env,
    handle: Unknown,
    feature_key: String,
    user_id: String,
) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::GetFeature(feature_key, user_id))
}

#[napi(ts_return_type = "Promise<void>")]
pub fn set_feature_async(env: Env, handle: Unknown, json: String) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::SetFeature(json))
}

#[napi(ts_return_type = "Promise<boolean>")]
pub fn delete_feature_async(
    env: Env,
    handle: Unknown,
    feature_key: String,
    user_id: String,
) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::DeleteFeature(feature_key, user_id))
}

#[napi(ts_return_type = "Promise<Array<string>>")]
pub fn features_of_async(env: Env, handle: Unknown, user_id: String) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::FeaturesOf(user_id))
}

#[napi(ts_return_type = "Promise<void>")]
pub fn close_async(env: Env, handle: Unknown) -> Result<AsyncTask<Call>> {
    call(&env, &handle, Op::Close)
}
