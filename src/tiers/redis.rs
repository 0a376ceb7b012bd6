//! [`RedisStore`]: user storage maps in Redis, one string key per user and campaign.
//!
//! Keys are `campaignKey:userId` (after an optional prefix) and values the camelCase JSON of the whole map,
//! written with a plain `SET`: what VWO's Redis user-storage helpers read and write, so an SDK using those
//! helpers and a server using ussdb share one keyspace.
//!
//! Every write goes through one Lua script on one key ([`MERGE_SCRIPT`]), so it is atomic on that key and runs
//! unchanged on Redis Cluster: the first stored variation wins and goal lists merge as a set union. The script
//! edits the stored JSON object itself, so fields written by a newer writer survive a rewrite.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{Client, Connection, ErrorKind, RedisError, Script};

use crate::Result;
use crate::error::{BackendErrorKind, Error};
use crate::model::CampaignUserMap;
use crate::sdk::UserStorageService;

/// How long connecting, one command's write and one reply's read may take when [`RedisConfig::timeout`] is not
/// changed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

const BACKEND: &str = "redis";

/// The code of the error reply the merge script sends for a stored value that is not a JSON object.
const NOT_JSON: &str = "USSDB_NOT_JSON";

/// Stores `ARGV[1]` (a map's JSON) under `KEYS[1]` unless a value is there; otherwise keeps the stored value's
/// variation and every other field of it, adds the incoming goals it lacks (joined by `_vwo_`, stored order
/// first) and rewrites it only when a goal was added. `ARGV[2]` is the TTL in milliseconds, or empty for none.
/// Returns the value stored when the script ends.
const MERGE_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  return ARGV[1]
end
local ok, stored = pcall(cjson.decode, cur)
if not ok or type(stored) ~= 'table' then
  return redis.error_reply('USSDB_NOT_JSON the stored value is not a JSON object')
end
local incoming = cjson.decode(ARGV[1])
local goals, seen = {}, {}
local function add(list)
  if type(list) ~= 'string' then return end
  local i = 1
  while true do
    local j = string.find(list, '_vwo_', i, true)
    local goal = j and string.sub(list, i, j - 1) or string.sub(list, i)
    if goal ~= '' and not seen[goal] then
      seen[goal] = true
      goals[#goals + 1] = goal
    end
    if not j then return end
    i = j + 5
  end
end
local held = stored.goalIdentifier
if type(held) == 'table' then
  for _, goal in ipairs(held) do add(goal) end
else
  add(held)
end
local before = #goals
add(incoming.goalIdentifier)
if #goals == before then
  return cur
end
stored.goalIdentifier = table.concat(goals, '_vwo_')
local out = cjson.encode(stored)
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], out, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], out, 'KEEPTTL')
end
return out
"#;

/// Where and how a [`RedisStore`] keeps its maps.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The server's URL, e.g. `redis://127.0.0.1:6379/0` or `redis://:password@host:6379`. Only the first is
    /// used.
    pub urls: Vec<String>,
    /// Put before every key (e.g. `"vwo:"`); empty by default, as VWO's helpers write.
    pub key_prefix: String,
    /// Expiry of a written key; `None` (the default) keeps keys until deleted, as VWO's helpers do.
    pub ttl: Option<Duration>,
    /// Limit on connecting, on writing one command and on reading its reply.
    pub timeout: Duration,
}

impl RedisConfig {
    /// A configuration for one server with the defaults: no prefix, no TTL, [`DEFAULT_TIMEOUT`].
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            urls: vec![url.into()],
            key_prefix: String::new(),
            ttl: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// User storage maps in Redis (see the module documentation for keys, values and the merge rule).
///
/// One connection, opened on first use and reopened on the next call after a failure dropped it; calls from
/// several threads take turns on it.
pub struct RedisStore {
    client: Client,
    config: RedisConfig,
    /// The URL without its user name and password, for error messages.
    target: String,
    conn: Mutex<Option<Connection>>,
    script: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("key_prefix", &self.config.key_prefix)
            .field("ttl", &self.config.ttl)
            .field("timeout", &self.config.timeout)
            .finish()
    }
}

impl RedisStore {
    /// A store at `url` with the default configuration. Nothing is contacted until the first call.
    pub fn open(url: &str) -> Result<RedisStore> {
        RedisStore::with_config(RedisConfig::new(url))
    }

    /// A store with `config`. Nothing is contacted until the first call.
    pub fn with_config(config: RedisConfig) -> Result<RedisStore> {
        let Some(url) = config.urls.first() else {
            return Err(Error::InvalidOption {
                option: "RedisConfig::urls",
                reason: "no URL given".into(),
            });
        };
        if config.timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "RedisConfig::timeout",
                reason: "must be above zero".into(),
            });
        }
        if config.ttl.is_some_and(|ttl| ttl.as_millis() == 0) {
            return Err(Error::InvalidOption {
                option: "RedisConfig::ttl",
                reason: "must be at least one millisecond".into(),
            });
        }
        let target = redact(url);
        let client = Client::open(url.as_str())
            .map_err(|e| Error::backend(BACKEND, BackendErrorKind::Config, target.clone(), e))?;
        Ok(RedisStore {
            client,
            config,
            target,
            conn: Mutex::new(None),
            script: Script::new(MERGE_SCRIPT),
        })
    }

    /// The Redis key of `user_id` in `campaign_key`: the prefix, then `campaignKey:userId`.
    pub fn key(&self, user_id: &str, campaign_key: &str) -> String {
        format!("{}{campaign_key}:{user_id}", self.config.key_prefix)
    }

    /// The server's URL without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The stored JSON under the key of `user_id` in `campaign_key`, as stored.
    pub fn get_raw(&self, user_id: &str, campaign_key: &str) -> Result<Option<String>> {
        let key = self.key(user_id, campaign_key);
        let raw: Option<Vec<u8>> =
            self.run(&key, |conn| redis::cmd("GET").arg(&key).query(conn))?;
        raw.map(|bytes| {
            String::from_utf8(bytes).map_err(|e| {
                Error::backend(
                    BACKEND,
                    BackendErrorKind::InvalidData,
                    self.key_target(&key),
                    e,
                )
            })
        })
        .transpose()
    }

    /// Stores `map` under the fleet's merge rule and returns what is stored afterwards: the first stored
    /// variation wins, goal lists merge as a set union, other stored fields are kept (`docs/FLEET.md`).
    pub fn set_merged(&self, map: &CampaignUserMap) -> Result<CampaignUserMap> {
        let key = self.key(&map.user_id, &map.campaign_key);
        let json = serde_json::to_string(map).map_err(|e| {
            Error::backend(BACKEND, BackendErrorKind::Other, self.key_target(&key), e)
        })?;
        let ttl = self
            .config
            .ttl
            .map(|ttl| ttl.as_millis().to_string())
            .unwrap_or_default();
        let stored: Vec<u8> = self.run(&key, |conn| {
            self.script.key(&key).arg(&json).arg(&ttl).invoke(conn)
        })?;
        self.decode(&key, &stored)
    }

    fn key_target(&self, key: &str) -> String {
        format!("{} key {key:?}", self.target)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<CampaignUserMap> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::backend(
                BACKEND,
                BackendErrorKind::InvalidData,
                self.key_target(key),
                e,
            )
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        // A panic while holding the lock leaves at worst a connection in an unknown state; dropping it is safe.
        self.conn.lock().unwrap_or_else(|poisoned: PoisonError<_>| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }

    /// Runs `op` on the connection, opening it first if needed; drops it when the failure may have left it
    /// unusable, so the next call reconnects.
    fn run<T>(
        &self,
        key: &str,
        op: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut guard = self.lock();
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        let Some(conn) = guard.as_mut() else {
            return Err(Error::backend(
                BACKEND,
                BackendErrorKind::Unavailable,
                self.target.clone(),
                "no connection",
            ));
        };
        op(conn).map_err(|e| {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
            {
                *guard = None;
            }
            self.error(key, e)
        })
    }

    fn connect(&self) -> Result<Connection> {
        let timeout = Some(self.config.timeout);
        let conn = self
            .client
            .get_connection_with_timeout(self.config.timeout)
            .map_err(|e| self.error("", e))?;
        conn.set_read_timeout(timeout)
            .and_then(|()| conn.set_write_timeout(timeout))
            .map_err(|e| self.error("", e))?;
        Ok(conn)
    }

    fn error(&self, key: &str, e: RedisError) -> Error {
        let refused = matches!(e.kind(), ErrorKind::AuthenticationFailed)
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
        let kind = if refused {
            BackendErrorKind::Refused
        } else if e.code() == Some(NOT_JSON) || e.to_string().contains(NOT_JSON) {
            BackendErrorKind::InvalidData
        } else if e.is_timeout() {
            BackendErrorKind::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            BackendErrorKind::Unavailable
        } else {
            match e.kind() {
                ErrorKind::InvalidClientConfig => BackendErrorKind::Config,
                ErrorKind::UnexpectedReturnType | ErrorKind::Parse => BackendErrorKind::InvalidData,
                _ => BackendErrorKind::Other,
            }
        };
        let target = if key.is_empty() {
            self.target.clone()
        } else {
            self.key_target(key)
        };
        Error::backend(BACKEND, kind, target, e)
    }
}

impl UserStorageService for RedisStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Result<Option<CampaignUserMap>> {
        let key = self.key(user_id, campaign_key);
        let raw: Option<Vec<u8>> =
            self.run(&key, |conn| redis::cmd("GET").arg(&key).query(conn))?;
        raw.map(|bytes| self.decode(&key, &bytes)).transpose()
    }

    /// Stores `map` under the fleet's merge rule ([`RedisStore::set_merged`]): a variation already stored for
    /// the user is kept.
    fn set(&self, map: &CampaignUserMap) -> Result<()> {
        self.set_merged(map).map(|_| ())
    }
}

/// `url` without the user name and password of its authority part.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!(
            "{scheme}://{}{path}",
            authority.get(at + 1..).unwrap_or_default()
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_drops_credentials() {
        assert_eq!(
            redact("redis://:secret@127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://u:p@h"), "redis://h");
        assert_eq!(redact("redis://h:1/2"), "redis://h:1/2");
        assert_eq!(redact("unix:///tmp/x.sock"), "unix:///tmp/x.sock");
    }
}
