//! Where the Redis tier is and how its keys look: [`RedisConfig`], and the redaction that keeps passwords out of
//! every message.

use std::time::Duration;

use crate::{BackendErrorKind, Error, Result};

/// The name every [`Error::Backend`] of this tier carries.
pub(crate) const BACKEND: &str = "redis";

/// How a [`RedisStore`](super::RedisStore) (and a [`Tiered`](super::Tiered) store's remote half) reaches Redis
/// or Valkey, and how it lays out its keys.
///
/// By default keys and values are the ones VWO's Redis helpers write: key `campaignKey:userId`, value the SDK's
/// camelCase JSON, a plain `SET` with no expiry. So an existing keyspace written by those helpers is read as it
/// is, and the helpers read what this store writes.
///
/// ```
/// use std::time::Duration;
/// use ussdb::RedisConfig;
///
/// let standalone = RedisConfig::new("redis://:secret@127.0.0.1:6379/0");
/// let cluster = RedisConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .key_prefix("vwo:")
///     .ttl(Some(Duration::from_secs(90 * 24 * 3600)));
/// assert!(!standalone.is_cluster() && cluster.is_cluster());
/// // Passwords never show in what is printed.
/// assert_eq!(standalone.target(), "redis://:***@127.0.0.1:6379/0");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) key_prefix: String,
    pub(crate) feature_prefix: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target())
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("feature_prefix", &self.feature_prefix)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// The segment between the key prefix and an FME record's `featureKey:userId` by default, which keeps FME records
/// apart from the campaign mappings' `campaignKey:userId` keys (see [`RedisConfig::feature_prefix`]).
pub(crate) const DEFAULT_FEATURE_PREFIX: &str = "fme:";

/// How long connecting may take by default before a call fails with [`BackendErrorKind::Timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take by default before it fails with [`BackendErrorKind::Timeout`].
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisConfig {
    /// One Redis or Valkey server (`redis://[user][:password]@host:port[/db]`, or `rediss://` for TLS if the
    /// client was built with it).
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig::with_urls(vec![url.into()], false)
    }

    /// A Redis Cluster, reached through any of these seed nodes (each a `redis://` URL).
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> RedisConfig {
        RedisConfig::with_urls(seeds.into_iter().map(Into::into).collect(), true)
    }

    /// Reads a command-line style spec: one URL for a standalone server, or URLs separated by commas for a
    /// Cluster's seed nodes.
    pub fn parse(spec: &str) -> Result<RedisConfig> {
        let urls: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let config = match urls.len() {
            0 => {
                return Err(Error::backend(
                    BACKEND,
                    BackendErrorKind::Config,
                    "(no URL)",
                    "no Redis URL given",
                ));
            }
            1 => RedisConfig::with_urls(urls, false),
            _ => RedisConfig::with_urls(urls, true),
        };
        config.validate()?;
        Ok(config)
    }

    fn with_urls(urls: Vec<String>, cluster: bool) -> RedisConfig {
        RedisConfig {
            urls,
            cluster,
            key_prefix: String::new(),
            feature_prefix: DEFAULT_FEATURE_PREFIX.to_owned(),
            ttl: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }

    /// Puts `prefix` before every key (default: none, as VWO's helpers write). E.g. `"vwo:"` gives
    /// `vwo:campaignKey:userId`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> RedisConfig {
        self.key_prefix = prefix.into();
        self
    }

    /// Puts `segment` between the key prefix and an FME record's `featureKey:userId` (default `"fme:"`), so the key of user `u`'s record for feature flag `f` is
    /// `prefix + "fme:f:u"`, apart from the campaign mapping `prefix + "f:u"` of a campaign with the same key. An
    /// empty segment gives the bare `featureKey:userId` of the Go SDK's example connector, shared with the campaign
    /// keys: only for a keyspace that holds FME records alone.
    pub fn feature_prefix(mut self, segment: impl Into<String>) -> RedisConfig {
        self.feature_prefix = segment.into();
        self
    }

    /// Lets every key expire this long after its last write (default: never, as VWO's helpers write). Whole
    /// milliseconds; anything under one millisecond means no expiry.
    pub fn ttl(mut self, ttl: Option<Duration>) -> RedisConfig {
        self.ttl = ttl.filter(|t| t.as_millis() > 0);
        self
    }

    /// How long connecting to a server may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take (default [`DEFAULT_RESPONSE_TIMEOUT`]).
    pub fn response_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.response_timeout = timeout;
        self
    }

    /// True for a Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URLs, passwords replaced by `***`, comma separated: what error messages name.
    pub fn target(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every password found in the URLs, to scrub from the client library's own messages.
    pub(crate) fn secrets(&self) -> Vec<String> {
        self.urls
            .iter()
            .filter_map(|u| password_span(u).map(|(start, end)| u.get(start..end)))
            .flatten()
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Refuses what cannot work before anything is contacted: no URL, an unparsable one, a zero timeout.
    pub(crate) fn validate(&self) -> Result<()> {
        let config_error = |reason: String| {
            Error::backend(BACKEND, BackendErrorKind::Config, self.target(), reason)
        };
        if self.urls.is_empty() {
            return Err(config_error("no Redis URL given".into()));
        }
        for url in &self.urls {
            // The client's own message may quote the URL, password and all, so it is not passed on.
            if redis::Client::open(url.as_str()).is_err() {
                return Err(config_error(format!(
                    "{} is not a redis:// URL (expected redis://[user][:password]@host:port[/db])",
                    redact_url(url)
                )));
            }
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(config_error("timeouts must be above zero".into()));
        }
        Ok(())
    }

    /// The key of a mapping: `prefix + campaignKey + ":" + userId`, as VWO's helpers build it.
    pub(crate) fn key(&self, user_id: &str, campaign_key: &str) -> String {
        let mut key =
            String::with_capacity(self.key_prefix.len() + campaign_key.len() + 1 + user_id.len());
        key.push_str(&self.key_prefix);
        key.push_str(campaign_key);
        key.push(':');
        key.push_str(user_id);
        key
    }

    /// The key of an FME record: `prefix + featurePrefix + featureKey + ":" + userId`.
    pub(crate) fn feature_key(&self, feature_key: &str, user_id: &str) -> String {
        let mut key = String::with_capacity(
            self.key_prefix.len()
                + self.feature_prefix.len()
                + feature_key.len()
                + 1
                + user_id.len(),
        );
        key.push_str(&self.key_prefix);
        key.push_str(&self.feature_prefix);
        key.push_str(feature_key);
        key.push(':');
        key.push_str(user_id);
        key
    }

    /// The `ttl` in whole milliseconds, 0 for none.
    pub(crate) fn ttl_millis(&self) -> u64 {
        self.ttl
            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The byte range of the password in `scheme://user:password@host...`, if there is one.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let rest = url.get(authority_start..)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..authority_end)?;
    let at = authority.rfind('@')?;
    let colon = authority.get(..at)?.find(':')?;
    Some((authority_start + colon + 1, authority_start + at))
}

/// `url` with its password replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    match password_span(url) {
        Some((start, end)) => format!(
            "{}***{}",
            url.get(..start).unwrap_or_default(),
            url.get(end..).unwrap_or_default()
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://u:p@ss@h:1"), "redis://u:***@h:1");
        assert_eq!(redact_url("redis://u@h:1"), "redis://u@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let c = RedisConfig::cluster(["redis://:a@h:1", "redis://:b@h:2"]);
        assert_eq!(c.target(), "redis://:***@h:1,redis://:***@h:2");
        assert_eq!(c.secrets(), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn keys_are_the_helpers_keys() {
        let c = RedisConfig::new("redis://h:1");
        assert_eq!(c.key("user-1", "camp"), "camp:user-1");
        assert_eq!(c.feature_key("f", "u"), "fme:f:u");
        assert_eq!(c.clone().feature_prefix("").feature_key("f", "u"), "f:u");
        assert_eq!(c.key_prefix("vwo:").key("u", "c"), "vwo:c:u");
    }

    #[test]
    fn specs_parse_into_standalone_or_cluster() {
        assert!(
            !RedisConfig::parse("redis://h:1")
                .expect("parses")
                .is_cluster()
        );
        assert!(
            RedisConfig::parse("redis://h:1, redis://h:2")
                .expect("parses")
                .is_cluster()
        );
        let bad = RedisConfig::parse("http://:pw@h:1").expect_err("not redis");
        assert_eq!(bad.backend_kind(), Some(BackendErrorKind::Config));
        assert!(!bad.to_string().contains("pw"), "{bad}");
    }
}
